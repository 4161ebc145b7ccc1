"""synth-train's library: everything the DVC stages (``stages/``) and the
research tools (``research/``) share. Stages parse arguments, read params and
call into here; nothing here imports a stage."""
