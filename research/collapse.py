"""make collapse: ``python -m research.collapse [--params FILE]``.

The distillation flywheel and model collapse (Shumailov et al., 2023), offline:
generation 0 trains on original records, each later one on what the previous
generation's model wrote (arm ``pure``) or with a share of original records
(arm ``mixed``). Each run is a working directory ``data/collapse/<run>/`` where
the pipeline's own stages run; a finished run is skipped. Writes
``metrics/collapse.json``, ``plots/collapse.png`` and ``reports/collapse.md``
(docs/experiments.md, "Model collapse").
"""

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

from synthtrain.evaluation.judges import minilm_encoder  # noqa: E402
from synthtrain.evaluation.textmetrics import distinct_n, self_bleu, words  # noqa: E402
from synthtrain.params import Collapse, StageError, load_params, parse_params  # noqa: E402
from synthtrain.cli import run_stage, stage_arguments  # noqa: E402
from synthtrain.records import SCHEMA, write_metrics  # noqa: E402

log = logging.getLogger("collapse")
REPO = Path(__file__).resolve().parent.parent
WORK = Path("data/collapse")
METRICS = Path("metrics/collapse.json")
PLOT = Path("plots/collapse.png")
REPORT = Path("reports/collapse.md")
SHARED = ("data/heldout", "data/raw/builtin_eval.parquet", "models/tokenizer", "models/judges")  # the pipeline's, read by every run
GENERATED = "generated"  # the generate source of every run: data/raw/generated.parquet
ARMS = ("pure", "mixed")


@dataclass(frozen=True)
class CollapseRun:
    name: str
    generation: int
    arm: str  # "original" for generation 0
    parent: str | None  # the run whose generated data this one trains on


def plan(config: Collapse) -> list[CollapseRun]:
    runs = [CollapseRun("gen0", 0, "original", None)]
    for arm in ARMS:
        for k in range(1, config.generations + 1):
            runs.append(CollapseRun(f"gen{k}-{arm}", k, arm, "gen0" if k == 1 else f"gen{k - 1}-{arm}"))
    return runs


def run_params(raw: dict, config: Collapse, run: CollapseRun) -> dict:
    """The pipeline's params with collapse's settings on top, and the run's generate source."""
    params = copy.deepcopy(raw)
    for section in ("train", "tokenize", "eval"):
        params.setdefault(section, {}).update(getattr(config, section))
    source = {"kind": "generate", "teacher": "models/current", "method": config.method, "n": config.records,
              "sampling": config.sampling.model_dump(), "seed": config.seed + run.generation}  # fmt: skip
    if config.seed_file:
        source["seed_file"] = str(Path(config.seed_file).resolve())
    params["sources"] = {GENERATED: source}
    params.pop("collapse", None)
    parse_params(params, f"collapse run {run.name}")  # collapse.train/tokenize/eval keys are checked here
    return params


def original_records(config: Collapse, pool: str) -> pa.Table:
    path = Path(f"data/sample/{pool}.parquet")
    if not path.is_file():
        raise StageError(f"{path} is missing: run `dvc repro sample@{pool}` (make collapse does)")
    table = pq.read_table(path)
    table = table.filter(pc.equal(table["category"], "instruction"))
    if table.num_rows < config.records:
        raise StageError(f"{path} has {table.num_rows} instruction records, fewer than collapse.records = {config.records}")
    order = np.random.default_rng(config.seed).permutation(table.num_rows)[: config.records]
    return table.take(order)


def training_records(run: CollapseRun, config: Collapse, original: pa.Table) -> pa.Table:
    """gen0: the original records; pure: the parent's generated records; mixed: real_fraction original, the rest generated."""
    if run.parent is None:
        return original
    generated = pq.read_table(WORK / run.parent / f"data/raw/{GENERATED}.parquet")
    real = round(config.records * config.real_fraction) if run.arm == "mixed" else 0
    if generated.num_rows < config.records - real:
        log.warning("%s: its teacher %s generated %d records, %d short of the size", run.name, run.parent, generated.num_rows,
                    config.records - real - generated.num_rows)
    table = pa.concat_tables([original.slice(0, real).cast(SCHEMA), generated.slice(0, config.records - real).cast(SCHEMA)])
    return table.take(np.random.default_rng(config.seed + run.generation).permutation(table.num_rows))


def stage(workdir: Path, module: str, *args: str) -> None:
    """``python -m <module>`` in the run's directory, its log kept there."""
    log_path = workdir / "logs" / f"{module.split('.')[-1]}{'-' + args[0] if args else ''}.log"
    log_path.parent.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with open(log_path, "w") as out:
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:])
        raise StageError(f"{workdir.name}: {module} failed (log: {log_path}):\n{tail}")


def prepare(run: CollapseRun, params: dict) -> Path:
    """The run's working directory; emptied first if its settings changed."""
    workdir = WORK / run.name
    settings = json.dumps([params, run.parent], sort_keys=True)
    fingerprint = hashlib.blake2b(settings.encode(), digest_size=8).hexdigest()
    marker = workdir / "settings.fingerprint"
    if workdir.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        log.info("%s: settings changed, starting it over", run.name)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for shared in SHARED:
        link = workdir / shared
        if not link.exists():
            if not Path(shared).exists():
                raise StageError(f"{shared} is missing: run `dvc repro` first (make collapse does)")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(shared).resolve())
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    marker.write_text(fingerprint)
    return workdir


def execute(run: CollapseRun, params: dict, config: Collapse, original: pa.Table) -> Path:
    workdir = prepare(run, params)
    if not (workdir / "metrics/eval.json").is_file():
        mix = workdir / "data/mix/train.parquet"
        mix.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(training_records(run, config, original), mix)
        for module in ("stages.tokenize", "stages.train", "stages.eval"):
            log.info("%s: %s", run.name, module)
            stage(workdir, module)
    if not (workdir / f"metrics/download/{GENERATED}.json").is_file():
        log.info("%s: generating %d records (%s)", run.name, config.records, config.method)
        stage(workdir, "stages.download", GENERATED)
    return workdir


def texts_of(table: pa.Table) -> list[str]:
    return ["\n".join(m["content"] for m in messages) for messages in table["messages"].to_pylist()]


def data_metrics(table: pa.Table, config: Collapse) -> dict:
    """How varied a set of records is: distinct n-grams, self-BLEU, MiniLM spread, length."""
    texts = texts_of(table)
    sample = [texts[i] for i in np.random.default_rng(config.seed).permutation(len(texts))[: config.spread_records]]
    vectors = minilm_encoder(sample)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors @ vectors.T
    pairs = len(sample) * (len(sample) - 1)
    return {"records": len(texts), "distinct_1": round(distinct_n(texts, 1), 4), "distinct_2": round(distinct_n(texts, 2), 4),
            "self_bleu": round(self_bleu(texts), 2), "spread": round(float((pairs - (similarity.sum() - len(sample))) / pairs), 4),
            "words": round(float(np.mean([len(words(t)) for t in texts])), 1)}  # fmt: skip


def instruction_ppl(evaluation: dict) -> float:
    """Perplexity over the held-out instruction records of every source (their token-weighted mean loss)."""
    sets = [key[: -len("_loss")] for key in evaluation if key.startswith("heldout_") and key.endswith("_instruction_loss")]
    tokens = sum(evaluation[f"{s}_tokens"] for s in sets)
    if not tokens:
        raise StageError("the held-out data has no instruction records to measure the collapse on")
    return round(math.exp(sum(evaluation[f"{s}_loss"] * evaluation[f"{s}_tokens"] for s in sets) / tokens), 3)


def run_metrics(run: CollapseRun, workdir: Path, config: Collapse) -> dict:
    evaluation = json.loads((workdir / "metrics/eval.json").read_text())
    download = json.loads((workdir / f"metrics/download/{GENERATED}.json").read_text())
    generated = pq.read_table(workdir / f"data/raw/{GENERATED}.parquet")
    return {"generation": run.generation, "arm": run.arm, "trained_on": run.parent or "original",
            "heldout_ppl": evaluation["heldout_ppl"], "heldout_bpb": evaluation["heldout_bpb"],
            "heldout_instruction_ppl": instruction_ppl(evaluation),
            "tasks_accuracy": evaluation.get("tasks_accuracy"),
            "generated": {**data_metrics(generated, config), "kept_share": round(download["kept"] / max(download["read"], 1), 4),
                          "rejected_by_reason": download["rejected_by_reason"]}}  # fmt: skip


def series(results: dict, arm: str, key) -> tuple[list[int], list[float]]:
    runs = [results["gen0"]] + [r for r in results.values() if r["arm"] == arm]
    return [r["generation"] for r in runs], [key(r) for r in runs]


PANELS = (  # (title, value of a run, the original data's value for a reference line or None)
    ("held-out perplexity (original instructions)", lambda r: r["heldout_instruction_ppl"], None),
    ("task accuracy", lambda r: r["tasks_accuracy"], None),
    ("distinct-2 of generated data", lambda r: r["generated"]["distinct_2"], "distinct_2"),
    ("self-BLEU of generated data", lambda r: r["generated"]["self_bleu"], "self_bleu"),
    ("MiniLM spread of generated data", lambda r: r["generated"]["spread"], "spread"),
    ("share of prompts kept", lambda r: r["generated"]["kept_share"], None),
)


def plot(results: dict, original: dict, config: Collapse, path: Path) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, key, reference) in zip(axes.flat, PANELS):
        for arm, style in zip(ARMS, ("o-", "s--")):
            label = "pure (generated only)" if arm == "pure" else f"mixed ({config.real_fraction:.0%} original)"
            ax.plot(*series(results, arm, key), style, label=label)
        if reference:
            ax.axhline(original[reference], color="grey", linestyle=":", label="original data")
        ax.set_title(title)
        ax.set_xlabel("generation")
        ax.set_xticks(range(config.generations + 1))
    axes.flat[0].legend(fontsize=8)
    axes.flat[2].legend(fontsize=8)
    figure.suptitle(f"Model collapse: {config.records:,} records per generation, {config.method}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def trend(values: list[float]) -> str:
    steps = np.diff(values)
    if (steps > 0).all():
        return "rises with every generation"
    if (steps < 0).all():
        return "falls with every generation"
    return "rises overall" if values[-1] > values[0] else "falls overall" if values[-1] < values[0] else "ends where it started"


def listing(values: list[float]) -> str:
    return " → ".join(f"{v:.4g}" for v in values)


def report(results: dict, original: dict, config: Collapse, params: dict, path: Path) -> None:
    last = config.generations
    train = {**params.get("train", {}), **config.train}

    def arm(key) -> dict[str, list[float]]:
        return {a: series(results, a, key)[1] for a in ARMS}

    ppl, words_ = arm(lambda r: r["heldout_instruction_ppl"]), arm(lambda r: r["generated"]["words"])
    distinct, bleu, spread = (arm(lambda r, k=k: r["generated"][k]) for k in ("distinct_2", "self_bleu", "spread"))
    accuracy = arm(lambda r: r["tasks_accuracy"])
    gen0 = ppl["pure"][0]
    lines = [
        "# Model collapse: the distillation flywheel on CPU",
        "",
        "Written by `make collapse` (`python -m research.collapse`; how it works: docs/experiments.md, \"Model collapse\"). Numbers: "
        "`metrics/collapse.json`; plot: `plots/collapse.png`.",
        "",
        f"Setup: generation 0 trains on {config.records:,} original instruction records (sample `{config.pool or 'smallest'}`); "
        f"each later generation on {config.records:,} records that the previous generation's model wrote with `{config.method}` "
        f"(temperature {config.sampling.temperature}, top-p {config.sampling.top_p}, at most {config.sampling.max_new_tokens} tokens "
        f"per turn), in the mixed arm with {config.real_fraction:.0%} of the original records in place of generated ones. "
        f"Every generation: model `{train.get('model')}`, {train.get('tokens'):,} training tokens, seed {train.get('seed', 0)}, "
        "one run each (no seed repeats: read small differences as noise).",
        "",
        "## Finding",
        "",
        f"- **Perplexity.** Held-out perplexity on original data (the pipeline's held-out instruction records) {trend(ppl['pure'])} in the pure arm "
        f"({listing(ppl['pure'])}), ending at {ppl['pure'][-1] / gen0:.1f}× generation 0's. With {config.real_fraction:.0%} "
        f"original data it {trend(ppl['mixed'])} ({listing(ppl['mixed'])}), ending at {ppl['mixed'][-1] / gen0:.1f}× generation "
        f"0's and {ppl['pure'][-1] / ppl['mixed'][-1]:.1f}× below the pure arm at generation {last}.",
        f"- **Length.** Mean words per generated record: pure {listing(words_['pure'])}, mixed {listing(words_['mixed'])}; "
        f"the original records have {original['words']:.4g}.",
        f"- **Diversity of the generated data** (original data: distinct-2 {original['distinct_2']}, self-BLEU "
        f"{original['self_bleu']}, spread {original['spread']}):",
        f"  - distinct-2 {trend(distinct['pure'])} in the pure arm ({listing(distinct['pure'])}) and "
        f"{trend(distinct['mixed'])} in the mixed arm ({listing(distinct['mixed'])});",
        f"  - self-BLEU {trend(bleu['pure'])} in the pure arm ({listing(bleu['pure'])}) and {trend(bleu['mixed'])} in the mixed "
        f"arm ({listing(bleu['mixed'])});",
        f"  - MiniLM spread {trend(spread['pure'])} in the pure arm ({listing(spread['pure'])}) and {trend(spread['mixed'])} "
        f"in the mixed arm ({listing(spread['mixed'])}).",
    ]
    if distinct["pure"][0] > original["distinct_2"] and spread["pure"][0] > original["spread"]:
        lines.append(f"  - Generation 0's data already has more distinct bigrams ({distinct['pure'][0]}) and a wider spread "
                     f"({spread['pure'][0]}) than the original data: these small teachers write noisier text than the templated "
                     "original, so here the diversity measures rise with noise as well as fall with narrowing.")
    values = [v for a in ARMS for v in accuracy[a]]
    lines.append(f"- **Task accuracy** is {values[0]} for every run: no model here solves a built-in problem, so it cannot show "
                 "a trend at this budget." if len(set(values)) == 1 else
                 f"- **Task accuracy**: pure {listing(accuracy['pure'])}, mixed {listing(accuracy['mixed'])}.")
    lines += [
        "",
        "## Per generation and arm",
        "",
        "| run | trained on | held-out ppl, instructions | held-out ppl, all | held-out bpb, all | task acc. | kept share | distinct-1 | distinct-2 | self-BLEU | spread | words |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| original data | | | | | | | {original['distinct_1']} | {original['distinct_2']} | {original['self_bleu']} | "
        f"{original['spread']} | {original['words']} |",
    ]
    for name, r in results.items():
        g = r["generated"]
        lines.append(f"| {name} | {r['trained_on']} | {r['heldout_instruction_ppl']:.3f} | {r['heldout_ppl']:.3f} | {r['heldout_bpb']:.4f} | "
                     f"{r['tasks_accuracy']} | {g['kept_share']} | {g['distinct_1']} | {g['distinct_2']} | {g['self_bleu']} | "
                     f"{g['spread']} | {g['words']} |")
    lines += ["", "Held-out columns: the pipeline's held-out records (`data/heldout/`), its instruction records alone and all of them "
              "(knowledge and web too, which no generation trains on). "
              "The generated-data columns describe what the run's model wrote (the next generation's training data); "
              "`kept share` is the share of prompts that gave a record after the generate stage's filters.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def collapse(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    raw = yaml.safe_load(Path(params_path).read_text())
    config = params.collapse
    pool = config.pool or min(params.sample.sizes, key=params.sample.sizes.get)
    original = original_records(config, pool)
    results = {}
    for run in plan(config):
        workdir = execute(run, run_params(raw, config, run), config, original)
        results[run.name] = run_metrics(run, workdir, config)
        log.info("%s: held-out ppl %.3f, generated distinct-2 %.4f", run.name, results[run.name]["heldout_ppl"],
                 results[run.name]["generated"]["distinct_2"])
    original_metrics = data_metrics(original, config)
    metrics = {"original": original_metrics, "runs": results}
    write_metrics(METRICS, metrics)
    plot(results, original_metrics, config, PLOT)
    report(results, original_metrics, config, raw, REPORT)
    log.info("wrote %s, %s and %s", METRICS, PLOT, REPORT)
    return metrics


def main(argv=None) -> None:
    args = stage_arguments(__doc__.splitlines()[0]).parse_args(argv)
    collapse(args.params)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_stage(main)
