import pytest

from conftest import REPO
from synthtrain.params import ParamsError, load_params, parse_params

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
