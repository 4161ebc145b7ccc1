import subprocess

import pytest
import yaml
from pydantic import BaseModel

from conftest import REPO
from synthtrain.params import Params, ParamsError, load_params, parse_params

BUILTIN = {"kind": "builtin", "max_samples": 10}


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.sources["builtin"].max_samples >= 1_200_000


def test_unknown_key_suggests_the_closest_name():
    message = error_of({"sources": {"builtin": {**BUILTIN, "max_sample": 5}}})
    assert "sources.builtin" in message and "unknown key 'max_sample'" in message and "did you mean 'max_samples'" in message


def test_unknown_section_suggests_the_closest_name():
    assert "did you mean 'world'" in error_of({"sources": {"builtin": BUILTIN}, "wrold": {}})


def test_wrong_type_names_key_value_and_what_is_allowed():
    message = error_of({"sources": {"builtin": {**BUILTIN, "max_samples": "many"}}})
    assert "sources.builtin.max_samples = 'many'" in message and "integer" in message


def test_out_of_range_names_key_value_and_bound():
    message = error_of({"sources": {"builtin": BUILTIN}, "world": {"qa_fraction": 1.5}})
    assert "world.qa_fraction = 1.5" in message and "less than or equal to 1" in message


def test_unknown_source_kind_suggests_a_kind():
    message = error_of({"sources": {"web": {"kind": "hubb", "name": "x", "max_samples": 1}}})
    assert "sources.web.kind is 'hubb'" in message and "did you mean 'hub'" in message


def test_local_source_needs_a_category():
    message = error_of({"sources": {"mine": {"kind": "local", "path": "x.jsonl", "max_samples": 1}}})
    assert "sources.mine.category" in message and "Field required" in message


def test_local_source_pairs_and_format_name_the_value_and_what_is_allowed():
    local = {"kind": "local", "path": "x.jsonl", "category": "instruction", "max_samples": 1}
    assert "sources.mine.pairs = 'both': Input should be 'keep' or 'chosen'" in error_of({"sources": {"mine": {**local, "pairs": "both"}}})
    message = error_of({"sources": {"mine": {**local, "format": "dpo"}}})
    assert "sources.mine.format = 'dpo'" in message and "'preference', 'hh_rlhf', 'sharegpt_preference' or 'turns'" in message
    assert parse_params({"sources": {"mine": local}}).sources["mine"].pairs == "keep"


def test_flaw_rates_are_bounded_in_total():
    flaws = {"exact_duplicate": 0.3, "near_duplicate": 0.3}
    assert "sum to 0.690" in error_of({"sources": {"builtin": {**BUILTIN, "flaws": flaws}}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def committed_params() -> dict:
    """params.yaml as committed: `dvc exp run -S` edits the working copy, which is not where defaults live."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    return yaml.safe_load(shown.stdout if shown.returncode == 0 else (REPO / "params.yaml").read_text())


def disagreements(default: BaseModel, written: dict, path: str = "") -> list[str]:
    """Keys whose params.yaml value is not the schema's default, and schema keys params.yaml leaves out.
    A map of named entries (sources, benchmarks, files) has no defaults to compare."""
    found = []
    for key in type(default).model_fields:
        expected = getattr(default, key)
        if key not in written:
            found.append(f"{path}{key}: missing from params.yaml")
        elif isinstance(expected, BaseModel) and isinstance(written[key], dict):
            found += disagreements(expected, written[key], f"{path}{key}.")
        elif isinstance(expected, dict):
            continue
        elif expected != written[key]:
            found.append(f"{path}{key}: schema default {expected!r}, params.yaml {written[key]!r}")
    return found


def test_params_yaml_restates_the_schema_defaults_and_nothing_else():
    """One source of defaults: the schema's. params.yaml lists every key (so that DVC
    tracks each one and `dvc params diff` shows it) with exactly the schema's value,
    so tests built from small dicts run on the defaults the pipeline uses."""
    written = committed_params()
    defaults = Params.model_validate({"sources": written["sources"]})
    assert disagreements(defaults, written) == []


def test_a_disagreeing_default_is_caught():
    written = committed_params()
    written["mix"]["tokens"] += 1
    del written["eval"]["heldout_records"]
    defaults = Params.model_validate({"sources": written["sources"]})
    assert disagreements(defaults, written) == [
        f"mix.tokens: schema default {defaults.mix.tokens}, params.yaml {defaults.mix.tokens + 1}",
        "eval.heldout_records: missing from params.yaml"]
