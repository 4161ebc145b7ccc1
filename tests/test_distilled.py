"""research/distilled.py on a hand-made run commit: a git repository whose dvc.lock points into a DVC cache laid
out as DVC lays it out (.dvc/cache/files/md5/<2>/<30>), no dvc and no teacher."""

import hashlib
import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from research.distilled import main
from synthtrain.params import StageError
from synthtrain.records import REJECT_SCHEMA, SCHEMA, make_record

README = "# synth-train\n\nintro\n\n<!-- distilled -->\nold section\n<!-- /distilled -->\n\n## Next\n"


def cache(root, table: pa.Table, name: str) -> str:
    local = root / name
    pq.write_table(table, local)
    md5 = hashlib.md5(local.read_bytes()).hexdigest()
    cached = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(local.read_bytes())
    local.unlink()
    return md5


def git(root, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def run_commit(tmp_path, monkeypatch):
    """A repository with one run commit (dvc.lock, params, download metrics) and runs.csv naming it."""
    kept = [make_record("distilled", "instruction", messages=[{"role": "user", "content": f"Name a colour number {i}."},
                                                              {"role": "assistant", "content": f"Colour {i} is blue."}])
            for i in range(8)]
    rejects = [{"source": "distilled", "reason": reason, "location": f"shard 0:{i}", "detail": f"{reason} detail", "raw": f"candidate {i}"}
               for i, reason in enumerate(["too_similar", "too_similar", "capped_reply"])]
    outs = {path: cache(tmp_path, pa.Table.from_pylist(rows, schema), name)
            for path, rows, schema, name in (("data/raw/distilled.parquet", kept, SCHEMA, "k.parquet"),
                                             ("data/rejects/download-distilled.parquet", rejects, REJECT_SCHEMA, "r.parquet"))}
    lock = {"schema": "2.0", "stages": {"download@distilled": {"cmd": "python -m stages.download distilled",
                                                                "outs": [{"path": p, "md5": m} for p, m in outs.items()]}}}
    metrics = {"read": 11, "kept": 8, "rejected": 3, "rejected_by_reason": {"too_similar": 2, "capped_reply": 1},
               "generation_tokens_per_s": 250.0, "records_per_s": 0.5}
    (tmp_path / "metrics/download").mkdir(parents=True)
    (tmp_path / "metrics/download/distilled.json").write_text(json.dumps(metrics))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {"distilled": {"kind": "generate", "teacher": "smollm2-135m-instruct"}}}))
    (tmp_path / "README.md").write_text(README)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "dvc.lock", "params.yaml", "metrics")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    rev = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/runs.csv").write_text(f"name,rev\nexp1-distilled-s0,{rev}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_report_has_the_statistics_one_example_per_reason_and_kept_records_and_the_readme_only_its_section(run_commit):
    main(["--samples", "3"])
    report = (run_commit / "reports/distilled.md").read_text()
    assert "wrote 11 candidates and 8 were kept (73%)" in report and "too_similar 2, capped_reply 1" in report
    assert "**too_similar** (too_similar detail)" in report and "**capped_reply**" in report
    assert report.count("> **user**: Name a colour number") == 3
    readme = (run_commit / "README.md").read_text()
    assert "old section" not in readme and "wrote 11 candidates" in readme and readme.count("> **user**") == 1
    assert readme.startswith("# synth-train\n\nintro\n\n<!-- distilled -->\n") and readme.endswith("<!-- /distilled -->\n\n## Next\n")
    main(["--samples", "3"])  # rerunning rewrites the section in place
    assert (run_commit / "README.md").read_text() == readme


def test_a_run_without_a_row_or_with_its_data_gone_fails_naming_it(run_commit):
    with pytest.raises(StageError, match="has no row exp1-distilled-s1"):
        main(["--run", "exp1-distilled-s1"])
    for cached in (run_commit / ".dvc/cache").rglob("*"):
        if cached.is_file():
            cached.unlink()
    with pytest.raises(StageError, match="data/raw/distilled.parquet of .* is not in the DVC cache"):
        main([])
