"""research/distilled.py on a hand-made run commit: a git and DVC repository whose run outputs are in its
DVC cache, read back at that commit with dvc.api (no teacher)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from research.distilled import main
from synthtrain.params import StageError
from synthtrain.records import REJECT_SCHEMA, SCHEMA, make_record

README = "# synth-train\n\nintro\n\n<!-- distilled -->\nold section\n<!-- /distilled -->\n\n## Next\n"
DVC = str(Path(sys.executable).parent / "dvc")  # the environment's, as tests/test_pipeline.py runs it
OUTS = ("data/raw/distilled.parquet", "data/rejects/download-distilled.parquet")


def run(root, *command: str) -> str:
    return subprocess.run(list(command), cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def run_commit(tmp_path, monkeypatch):
    """A repository with one run commit (the stage's outputs in the DVC cache, params, download metrics) and
    runs.csv naming it; the outputs are then removed from the workspace, as after an experiment run elsewhere."""
    kept = [make_record("distilled", "instruction", messages=[{"role": "user", "content": f"Name a colour number {i}."},
                                                              {"role": "assistant", "content": f"Colour {i} is blue."}])
            for i in range(8)]
    rejects = [{"source": "distilled", "reason": reason, "location": f"shard 0:{i}", "detail": f"{reason} detail", "raw": f"candidate {i}"}
               for i, reason in enumerate(["too_similar", "too_similar", "capped_reply"])]
    run(tmp_path, "git", "init", "-q")
    run(tmp_path, DVC, "init", "-q")
    stage = {"stages": {"download": {"cmd": "true", "outs": list(OUTS)}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stage))
    for path, rows, schema in zip(OUTS, (kept, rejects), (SCHEMA, REJECT_SCHEMA)):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema), tmp_path / path)
    metrics = {"read": 11, "kept": 8, "rejected": 3, "rejected_by_reason": {"too_similar": 2, "capped_reply": 1},
               "generation_tokens_per_s": 250.0, "records_per_s": 0.5, "precision": "fp32"}
    (tmp_path / "metrics/download").mkdir(parents=True)
    (tmp_path / "metrics/download/distilled.json").write_text(json.dumps(metrics))
    dedup = {"in": 8, "kept": 7, "exact_duplicates": 1, "near_duplicates": 0, "semantic_duplicates": 0, "decontaminated": 0, "heldout": 0}
    (tmp_path / "metrics/train").mkdir()
    (tmp_path / "metrics/train/metrics.json").write_text(json.dumps({"cpu": "AMD EPYC", "cores": 2, "cpu_flags": ["avx2"]}))
    (tmp_path / "metrics/dedup.json").write_text(json.dumps({"by_source": {"distilled": dedup, "builtin": dict(dedup, kept=99)}}))
    drawn = {"records": 4, "passes": 12.5, "available_tokens": 800}
    (tmp_path / "metrics/mix.json").write_text(json.dumps({"tokens": 10000, "by_category": {"instruction": drawn, "web": dict(drawn, records=0, passes=0)}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {"distilled": {"kind": "generate", "teacher": "smollm2-135m-instruct"}}}))
    run(tmp_path, DVC, "commit", "-f", "-q")
    run(tmp_path, "git", "add", "-A")
    run(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    rev = run(tmp_path, "git", "rev-parse", "HEAD")
    for path in OUTS:
        (tmp_path / path).unlink()
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/runs.csv").write_text(f"name,rev\nexp1-distilled-s0,{rev}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_report_has_the_statistics_one_example_per_reason_and_kept_records_and_the_readme_only_its_section(run_commit):
    main(["--samples", "3"])
    report = (run_commit / "reports/distilled.md").read_text()
    assert "wrote 11 candidates and 8 were kept (73%)" in report and "too_similar 2, capped_reply 1" in report
    assert "**too_similar** (too_similar detail)" in report and "**capped_reply**" in report
    assert "kept 0.50 records/s in fp32 on the run's machine (AMD EPYC, 2 cores, avx2;" in report
    # what dedup (of this source, not another) and the mix did with them
    assert "dedup kept 7 of 8 (1 exact" in report and "the run's mix drew 10,000 tokens from them: 12.5 passes over their 800 tokens" in report
    assert report.count("> **user**: Name a colour number") == 3
    readme = (run_commit / "README.md").read_text()
    assert "old section" not in readme and "wrote 11 candidates" in readme and readme.count("> **user**") == 1
    assert readme.startswith("# synth-train\n\nintro\n\n<!-- distilled -->\n") and readme.endswith("<!-- /distilled -->\n\n## Next\n")
    main(["--samples", "3"])  # rerunning rewrites the section in place
    assert (run_commit / "README.md").read_text() == readme


def test_a_run_without_a_row_or_with_its_data_gone_fails_naming_it(run_commit):
    with pytest.raises(StageError, match="has no row exp1-distilled-s1"):
        main(["--run", "exp1-distilled-s1"])
    shutil.rmtree(run_commit / ".dvc/cache")
    with pytest.raises(StageError, match="data/raw/distilled.parquet of .* cannot be read"):
        main([])
