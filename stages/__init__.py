"""synth-train: one module (or small subpackage) per DVC stage, plus the shared
record schema (`records`), params validation (`params`), text normalisation
(`text`) and the model presets (`model`)."""
