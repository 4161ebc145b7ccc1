"""The layout's rules, checked on the code itself: stages are thin and never
import each other, research tools import only the library, and every stage's
dvc.yaml deps cover the code it imports and the files outside the repo it reads."""

import ast
import copy
import glob
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from synthtrain.params import load_params

PACKAGES = ("stages", "synthtrain", "research")


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (at any depth of the
    code: a function-level import runs too), with ``from a import b`` giving a
    and a.b, since b may be a submodule."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_closure(module: str) -> set[str]:
    """The project's files that ``python -m module`` executes: the module, what it
    imports, transitively, and the __init__.py of every package on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name.split(".")[0] not in PACKAGES:
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return {str(path.relative_to(REPO)) for path in seen}


def stage_module(cmd: str) -> str:
    return cmd.split(" -m ", 1)[1].split()[0]


def files_read_outside(stage: str, params) -> set[str]:
    """The files outside the pipeline's own data that a stage reads, from its params."""
    inputs = {"dedup": [*params.dedup.decontaminate.benchmarks.values(), *params.dedup.accuracy.files.values()],
              "quality_score": list(params.quality.files.values()),
              "judges": list(params.eval.judges.real_files.values()),
              "eval": [benchmark for benchmark in params.eval.benchmarks.values() if benchmark.path is not None]}.get(stage, [])
    return {os.path.normpath(file) for spec in inputs for file in (glob.glob(spec.path) or [spec.path])}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in map(os.path.normpath, deps))


def missing_deps(dvc_yaml: dict, params) -> dict[str, list[str]]:
    """Per stage, the code files and outside files it uses that its deps do not list."""
    missing = {}
    for name, stage in dvc_yaml["stages"].items():
        stage = stage.get("do", stage)  # a foreach stage's template
        deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]
        used = import_closure(stage_module(stage["cmd"])) | files_read_outside(name, params)
        absent = sorted(path for path in used if not covered(path, deps))
        if absent:
            missing[name] = absent
    return missing


def stale_code_deps(dvc_yaml: dict) -> dict[str, list[str]]:
    """Per stage, the project's Python files its deps list that its code no longer imports:
    each makes an edit to that file rerun the stage (the train stage for minutes) for nothing."""
    stale = {}
    for name, stage in dvc_yaml["stages"].items():
        stage = stage.get("do", stage)
        used = import_closure(stage_module(stage["cmd"]))
        deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]
        if unused := sorted(dep for dep in deps if dep.endswith(".py") and dep not in used):
            stale[name] = unused
    return stale


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_stage_lists_the_code_it_imports_and_the_files_it_reads():
    assert missing_deps(dvc_yaml(), load_params(REPO / "params.yaml")) == {}


def test_no_stage_lists_code_it_does_not_import():
    assert stale_code_deps(dvc_yaml()) == {}
    drifted = copy.deepcopy(dvc_yaml())
    drifted["stages"]["sample"]["do"]["deps"].append("synthtrain/hardware.py")
    assert stale_code_deps(drifted) == {"sample": ["synthtrain/hardware.py"]}


def test_a_dep_dropped_from_dvc_yaml_is_caught():
    """The drifts this check exists for: code a stage imports through a library
    module, and a benchmark file named only in params.yaml."""
    drifted = copy.deepcopy(dvc_yaml())
    drops = {"download": "synthtrain/evaluation/textmetrics.py", "sample": "synthtrain/tokens/chat.py",
             "train": "synthtrain/records.py", "eval": "../shared/data/eval/blimp",
             "judges": "../shared/data/synthetic/gpteacher-toolformer.json"}
    for stage, dep in drops.items():
        template = drifted["stages"][stage].get("do", drifted["stages"][stage])
        template["deps"].remove(dep)
    missing = missing_deps(drifted, load_params(REPO / "params.yaml"))
    assert set(missing) == set(drops)
    for stage, dep in drops.items():
        assert any(path == dep or path.startswith(dep + "/") for path in missing[stage]), (stage, missing[stage])


def test_stages_never_import_stages_and_the_library_imports_neither_stages_nor_research():
    allowed = {"stages": ("synthtrain",), "research": ("synthtrain",), "synthtrain": ("synthtrain",)}
    offending = []
    for package, may_import in allowed.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for name in imported_modules(path):
                top = name.split(".")[0]
                if top in PACKAGES and top not in may_import:
                    offending.append(f"{path.relative_to(REPO)} imports {name}")
    assert offending == []


def test_each_stage_of_dvc_yaml_is_one_module_of_stages():
    commands = {name: stage_module(stage.get("do", stage)["cmd"]) for name, stage in dvc_yaml()["stages"].items()}
    assert commands == {name: f"stages.{name}" for name in commands}
    assert {path.stem for path in (REPO / "stages").glob("*.py")} - {"__init__"} == set(commands)


def test_the_readme_draws_the_current_dag():
    dvc = Path(sys.executable).parent / "dvc"
    drawn = subprocess.run([str(dvc), "dag", "--md"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert drawn in (REPO / "README.md").read_text()


def test_the_benchmark_page_shows_the_committed_results():
    """docs/benchmarks.md is generated from bench/results/*.json: a new result without `python -m bench.report` fails here."""
    from bench.report import render_benchmarks

    assert (REPO / "docs/benchmarks.md").read_text().startswith(render_benchmarks())
