"""report: the research experiments' results, from ``dvc exp show``, as plots and a results table.

    python -m research.report [--profile cpu] [--out reports/results.md] [--plots plots/report] [--runs-only [--rev COMMIT]]

Reads the runs of ``experiments/<profile>.yaml`` from ``dvc exp show --json -A``
(the newest where a name ran twice) and writes ``reports/results.md``,
``reports/runs.csv`` (adding rows, keeping those of runs from other machines) and
``plots/report/*.png``; the statistics (synthtrain/statistics.py) are described in
docs/experiments.md. Profiles other than cpu write to ``reports/<profile>/``.
``--runs-only [--rev COMMIT]`` adds the rows of the runs based on that commit (HEAD) to runs.csv and nothing else.
"""

import argparse
import csv
import io
import json
import math
import subprocess
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from synthtrain.experiments import ExperimentRun, curves_path, expand, first_per_name, load_definition, report_dir, save_rows  # noqa: E402
from synthtrain.params import StageError, load_params  # noqa: E402
from synthtrain.records import write_output_text  # noqa: E402
from synthtrain.statistics import (BIGRAM_MARGIN, CATEGORY_LOSS, NO_SIGNAL, SEEDS_NEEDED, SIGNAL, UNKNOWN, Comparison,  # noqa: E402
                                   Interval, Ranking, Signal, categories_at_bigram, holm, pairwise, rank, signal, t_interval, threshold_verdict, welch)
from synthtrain.cli import run_stage  # noqa: E402


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    digits: int = 3
    baselines: tuple["Metric", ...] = ()  # the levels a model must beat on this metric: n-gram losses, chance


# The eval's n-gram baselines, fitted on each run's own training tokens and scored on the held-out data.
UNIGRAM_LOSS = Metric("heldout_unigram_loss", "unigram loss", False)
BIGRAM_LOSS = Metric("heldout_bigram_loss", "bigram loss", False)
UNIGRAM_BPB = Metric("heldout_unigram_bpb", "unigram bits/byte", False)
BIGRAM_BPB = Metric("heldout_bigram_bpb", "bigram bits/byte", False)
BENCHMARK_CHANCE = Metric("benchmark_chance", "chance (benchmark mean)", True)
LOSS = Metric("heldout_loss", "held-out loss (nats/token)", False, baselines=(UNIGRAM_LOSS, BIGRAM_LOSS))
PRIMARY = Metric("heldout_bpb", "held-out bits/byte", False, baselines=(UNIGRAM_BPB, BIGRAM_BPB))
# the held-out records without an injected flaw: the same yardstick for every sample (exp2 compares samples)
CLEAN_BPB = Metric("heldout_clean_bpb", "clean held-out bits/byte", False,
                   baselines=(Metric("heldout_clean_unigram_bpb", "unigram bits/byte (clean)", False),
                              Metric("heldout_clean_bigram_bpb", "bigram bits/byte (clean)", False)))
COHERENCE = Metric("judge_coherence_score", "judge: coherence", True)
RELEVANCE = Metric("judge_relevance_score", "judge: relevance", True)
PREFERENCE = Metric("judge_preference_rank_length_controlled", "preference judge (LC)", True)
# exp4's cheap metrics: computed without a reference model or paid API.
CHEAP = [
    LOSS,
    PRIMARY,  # held-out bits per byte: the one metric every run measures on the same data, with a clear scale
    Metric("rougeL", "ROUGE-L", True),
    Metric("diversity_distinct_2", "distinct-2", True),
    Metric("diversity_repetition_rate", "replies in loops", False),
    RELEVANCE,
    COHERENCE,
    PREFERENCE,
    Metric("behaviour_mft_pass_rate", "MFT pass rate", True),
    Metric("behaviour_inv_consistency", "INV consistency", True),
]
# exp4's references: verifiable answers of the built-in world, and lm-eval benchmarks.
BENCHMARKS = ["blimp_acc", "arc_easy_acc", "piqa_acc", "winogrande_acc", "hellaswag_acc", "lambada_acc"]
TASK_FAMILIES = ["fact_recall", "arithmetic", "word_problem", "string", "format"]
TASKS = Metric("tasks_accuracy", "task accuracy", True)
TASK_METRICS = tuple(Metric(f"tasks_{family}_accuracy", family.replace("_", " "), True, baselines=(Metric(f"tasks_{family}_chance", "chance", True),))
                     for family in TASK_FAMILIES)
CLEAN_CATEGORY_BPB = tuple(Metric(f"heldout_clean_{category}_bpb", f"clean {category} held-out bits/byte", False,
                                  baselines=tuple(Metric(f"heldout_clean_{category}_{ngram}_bpb", f"{ngram} bits/byte (clean {category})", False)
                                                  for ngram in ("unigram", "bigram")))
                           for category in ("instruction", "knowledge", "web"))
INSTRUCTION_CLEAN_BPB = CLEAN_CATEGORY_BPB[0]
# exp3 by capability: each category's clean held-out data, and the task families a model of this scale can show
CAPABILITIES = (*CLEAN_CATEGORY_BPB, *TASK_METRICS)
BENCHMARK_MEAN = Metric("benchmark_mean", "benchmark mean acc", True, baselines=(BENCHMARK_CHANCE,))
REFERENCES = [
    TASKS,
    *(Metric(key, key.removesuffix("_acc").replace("_", "-") + " acc", True,
             baselines=(Metric(key.replace("_acc", "_chance"), "chance", True),)) for key in BENCHMARKS),
    BENCHMARK_MEAN,
]
TRAINING_TOKENS = Metric("training_tokens", "training tokens", True, 0)
REPLY_WORDS = Metric("response_words", "reply words", True, 1)
TABLE = [TRAINING_TOKENS, PRIMARY, *PRIMARY.baselines, CLEAN_BPB, *CLEAN_BPB.baselines, LOSS, *LOSS.baselines, TASKS, BENCHMARK_MEAN, *BENCHMARK_MEAN.baselines, REFERENCES[1],
         COHERENCE, RELEVANCE, CHEAP[2], CHEAP[3], PREFERENCE, REPLY_WORDS]
RHO_BAR = 0.8  # the research plan's bar for a cheap metric to stand in for a reference
MIN_MODELS = 8  # fewer models give a rank correlation whose bootstrap interval says nothing (3 models: 6 orders in all)
BOOTSTRAP = 2000
TASK_CHANCE_REFERENCE = Path("metrics/eval.json")  # the default evaluation: the built-in problems every run scores
JUDGE_CHECK = Path("metrics/judge_check.json")  # the judge_check stage: the cheap metrics against GPT-4 on real chat models
# The research plan's other expected outcomes (the "Expected outcomes" table).
PERPLEXITY_BAR = 20
EXPECTED_POOL, SHARE_BAR = 50_000, 0.8  # "~50K samples give 80 % of the best"
PLAN_MIX = "plan_40_30_30"


@dataclass
class Result:
    run: ExperimentRun
    rev: str
    metrics: dict[str, float]
    loss_curve: list[tuple[int, float]] = field(default_factory=list)


def exp_show(all_commits: bool = True, rev: str | None = None) -> list[dict]:
    """The experiments of every commit, or of the commit ``rev`` (default HEAD) only (seconds instead of minutes in a long history)."""
    which = ["-A"] if all_commits else ["--rev", rev] if rev else []
    shown = subprocess.run(["dvc", "exp", "show", "--json", *which, "--no-pager"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise StageError(f"dvc exp show failed: {shown.stderr.strip()}")
    return json.loads(shown.stdout)


def loss_curve(rev: str) -> list[tuple[int, float]]:
    """The training loss per step in the experiment's commit: only on the machine that ran it (DVC keeps experiment
    commits in local refs), so each run's curve is also committed next to its row (loss_curves.csv)."""
    shown = subprocess.run(["git", "show", f"{rev}:metrics/train/plots/metrics/train/loss.tsv"], capture_output=True, text=True)
    if shown.returncode != 0:
        return []
    return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(io.StringIO(shown.stdout), delimiter="\t")]


def recorded_curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, loss)] of each run in loss_curves.csv."""
    curves: dict[str, list[tuple[int, float]]] = {}
    if path.is_file():
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                curves.setdefault(row["name"], []).append((int(row["step"]), float(row["loss"])))
    return curves


def write_curves(results: list[Result], path: Path) -> None:
    """Add or replace the curves of the results that have one; other runs' curves (other machines) stay."""
    curves = recorded_curves(path) | {r.run.name: r.loss_curve for r in models(results) if r.loss_curve}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["name", "step", "loss"])
    writer.writerows([name, step, f"{loss:.5g}"] for name in sorted(curves) for step, loss in curves[name])
    write_output_text(path, text.getvalue())


def run_metrics(data: dict) -> dict[str, float]:
    files = {path: entry.get("data", {}) for path, entry in (data.get("metrics") or {}).items()}
    evaluated, trained = files.get("metrics/eval.json", {}), files.get("metrics/train/metrics.json", {})
    if not evaluated or not trained:
        return {}
    metrics = {k: float(v) for k, v in evaluated.items() if isinstance(v, (int, float))}
    present = [key for key in BENCHMARKS if key in metrics]
    if present:
        metrics["benchmark_mean"] = float(np.mean([metrics[key] for key in present]))
        metrics["benchmark_chance"] = float(np.mean([metrics.get(key.replace("_acc", "_chance"), 0.0) for key in present]))
    metrics["training_tokens"] = float(trained["tokens"])
    return metrics


IDENTITY_COLUMNS, LABEL_COLUMNS = ("name", "experiment", "config", "seed", "rev"), ("signal", "signal_reasons")  # runs.csv's non-metric columns


def recorded_metrics(path: Path) -> dict[str, tuple[str, dict[str, float]]]:
    """name -> (rev, metrics) of each row of runs.csv: the runs that finished on any machine, as committed."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["name"]: (row["rev"], {key: float(value) for key, value in row.items()
                                           if key not in IDENTITY_COLUMNS + LABEL_COLUMNS and value})
                for row in csv.DictReader(handle)}


def current_chance(metrics: dict[str, float], reference: dict) -> dict[str, float]:
    """The run's task chance as answers.task_chance gives it now. Chance is a property of the scored problems, and
    every run scores the built-in problems the default evaluation (``reference``, metrics/eval.json) scores, since no
    experiment sets builtin_eval or eval.tasks_per_family. A run evaluated before the rule for open answers changed
    (string chance 0 until the best constant reply counted) gets the reference's values, when its item counts and
    its fact recall and format chance, which that change left alone, show that it scored the same problems."""
    families = [key.removesuffix("_chance") for key in reference if key.startswith("tasks_") and key.endswith("_chance")]
    same = all(metrics.get(f"{family}_items") == reference.get(f"{family}_items") for family in families) and all(
        metrics.get(key) == reference.get(key) for key in ("tasks_fact_recall_chance", "tasks_format_chance"))
    return {**metrics, **{f"{family}_chance": float(reference[f"{family}_chance"]) for family in families}} if families and same else metrics


def collect(runs: list[ExperimentRun], all_commits: bool = True, rows: Path | None = None, rev: str | None = None) -> tuple[list[Result], list[str]]:
    """Finished experiments named like ``runs`` (the newest of each name), and the names that are missing or failed.
    A run that has no DVC experiment here but a row in ``rows`` (runs.csv: it finished on another machine, or its
    experiment was removed) is read from its row, its loss curve from loss_curves.csv next to ``rows``."""
    wanted: dict[str, list[ExperimentRun]] = {}
    for run in runs:
        wanted.setdefault(run.name, []).append(run)
    newest: dict[str, tuple[str, dict]] = {}
    for commit in exp_show(all_commits, rev):
        for experiment in commit.get("experiments") or []:
            name, executor = experiment.get("name"), experiment.get("executor")
            revision = (experiment.get("revs") or [{}])[0]
            data = revision.get("data")
            if name not in wanted or not data or revision.get("error") or (executor and executor.get("state") != "success"):
                continue
            if name not in newest or data["timestamp"] > newest[name][1]["timestamp"]:
                newest[name] = (revision["rev"], data)
    recorded = recorded_metrics(rows) if rows else {}
    curves = recorded_curves(curves_path(rows)) if rows else {}
    reference = json.loads(TASK_CHANCE_REFERENCE.read_text()) if TASK_CHANCE_REFERENCE.is_file() else {}
    results, missing = [], []
    for name, shared in wanted.items():
        rev, metrics = (newest[name][0], run_metrics(newest[name][1])) if name in newest else recorded.get(name, ("", {}))
        if metrics:
            metrics = current_chance(metrics, reference)
            curve = loss_curve(rev) or curves.get(name, [])
            results += [Result(run, rev, metrics, curve) for run in shared]  # a shared run: one result per experiment
        else:
            missing.append(name)
    return results, missing


def models(results: list[Result]) -> list[Result]:
    """One result per trained model: a run that two experiments share counts once."""
    return first_per_name(results, lambda result: result.run.name)


# --- statistics (the tests and intervals are in synthtrain/statistics.py) -------------------------
def summarise(results: list[Result], key: str) -> Interval | None:
    values = [r.metrics[key] for r in results if key in r.metrics]
    return t_interval(values) if values else None


def by_config(results: list[Result], experiment: str) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for result in results:
        if result.run.experiment == experiment:
            groups.setdefault(result.run.config, []).append(result)
    return groups


def config_signal(group: list[Result]) -> Signal:
    """No signal when none of the configuration's runs has any; signal when one has; otherwise unknown."""
    signals = [signal(r.metrics) for r in group]
    labels = {s.label for s in signals}
    label = NO_SIGNAL if labels == {NO_SIGNAL} else SIGNAL if SIGNAL in labels else UNKNOWN
    return Signal(label, tuple(dict.fromkeys(reason for s in signals if s.label == label for reason in s.reasons)))


def signal_cell(group: list[Result]) -> str:
    counts = Counter(signal(r.metrics).label for r in group)
    return ", ".join(f"{count} {label}" for label, count in counts.items())


class Family:
    """One experiment's configurations on one metric: every pair of those with signal (or unknown) is
    Welch-tested and Holm-adjusted as one family, whichever subset a sentence then ranks or compares."""

    def __init__(self, groups: dict[str, list[Result]], metric: Metric):
        self.groups, self.metric = groups, metric
        self.signals = {config: config_signal(group) for config, group in groups.items()}
        self.values = {config: values for config, group in groups.items() if self.signals[config].label != NO_SIGNAL
                       and (values := [r.metrics[metric.key] for r in group if metric.key in r.metrics])}
        self.comparisons = pairwise(self.values)

    def interval(self, config: str) -> str:
        return t_interval(self.values[config]).text(self.metric.digits)

    def ranking(self, among: list[str] | None = None) -> tuple[Ranking | None, str]:
        """The configurations (``among``, default all) ranked, and a sentence: a leader only when it is significantly
        better than every other after Holm, otherwise every configuration tied with the best; no-signal ones unranked."""
        among = list(self.groups) if among is None else among
        silent = [config for config in among if self.signals[config].label == NO_SIGNAL]
        unknown = [config for config in among if self.signals[config].label == UNKNOWN]
        notes = (f"; no signal, so not ranked: {', '.join(silent)}" if silent else "") + \
                (f"; baselines unknown (runs without the n-gram baselines) for {', '.join(unknown)}" if unknown else "")
        values = {config: self.values[config] for config in among if config in self.values}
        if len(values) < 2:
            return None, f"fewer than two configurations with signal measured {self.metric.label}{notes}"
        ranking = rank(values, self.metric.higher_is_better, self.comparisons)
        best, direction = ranking.order[0], "highest" if self.metric.higher_is_better else "lowest"
        if ranking.leader:
            worst = max(self.comparisons[best, config].adjusted for config in ranking.order[1:])
            text = (f"the {direction} {self.metric.label} is **{best}** ({self.interval(best)}), "
                    f"significantly {'above' if self.metric.higher_is_better else 'below'} every other configuration (Holm p ≤ {worst:.3g})")
        else:
            text = (f"tied: {', '.join(ranking.tied)} (no significant difference after Holm from the {direction} {self.metric.label}, "
                    f"{best} {self.interval(best)}; against the runner-up {ranking.order[1]}: {ranking.lead.text(self.metric.digits)})")
        if ranking.needs_seeds:
            text += f"; needs {SEEDS_NEEDED} seeds"
        return ranking, text + notes

    def compare(self, a: str, b: str) -> tuple[Comparison | None, str]:
        """a against b within the family, or why there is no comparison."""
        silent = [config for config in (a, b) if self.signals[config].label == NO_SIGNAL]
        if silent:
            return None, f"no signal from {' or '.join(silent)}, so no conclusion"
        if a not in self.values or b not in self.values:
            return None, f"{self.metric.label} not measured"
        comparison = self.comparisons[a, b]
        return comparison, f"{a} {self.interval(a)} against {b} {self.interval(b)}, {comparison.text(self.metric.digits)}"


def spearman(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float] | None:
    """Spearman's rho and its bootstrap 95% interval; None when either side is constant (no ranking)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = float(spearmanr(x, y).statistic)
    samples = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(x), len(x))
        if np.ptp(x[pick]) > 0 and np.ptp(y[pick]) > 0:
            samples.append(spearmanr(x[pick], y[pick]).statistic)
    low, high = np.percentile(samples, [2.5, 97.5]) if samples else (float("nan"), float("nan"))
    return rho, float(low), float(high)


def correlations(results: list[Result], seed: int = 0) -> dict[tuple[str, str], tuple[float, float, float] | None]:
    """(cheap key, reference key) -> Spearman over every run that has both; cheap metrics are oriented so that + means agreement."""
    rng = np.random.default_rng(seed)
    table = {}
    for cheap in CHEAP:
        for reference in REFERENCES:
            both = [r for r in models(results) if cheap.key in r.metrics and reference.key in r.metrics]
            if len(both) < MIN_MODELS:
                table[cheap.key, reference.key] = None
                continue
            sign = 1.0 if cheap.higher_is_better else -1.0
            x = np.array([sign * r.metrics[cheap.key] for r in both])
            y = np.array([r.metrics[reference.key] for r in both])
            table[cheap.key, reference.key] = spearman(x, y, rng)
    return table


# --- plots --------------------------------------------------------------------------------------
PANELS = [PRIMARY, BENCHMARK_MEAN, COHERENCE]
LINE_STYLES = {"unigram": ("grey", ":"), "bigram": ("grey", "--")}  # by a baseline's first word; the rest are chance levels
CHANCE_STYLE = ("tab:red", "-.")
ERROR_BARS = "mean and 95 % t-interval over seeds"


def draw_baselines(axis, group: list[Result], metric: Metric, left: float, right: float, labelled: set[str]) -> None:
    """The configuration's own baselines on ``metric`` (the mean over its runs) as horizontal segments."""
    for baseline in metric.baselines:
        if level := summarise(group, baseline.key):
            color, style = LINE_STYLES.get(baseline.label.split()[0], CHANCE_STYLE)
            axis.hlines(level.mean, left, right, colors=color, linestyles=style, label=None if baseline.label in labelled else baseline.label)
            labelled.add(baseline.label)


def legend(axis) -> None:
    if axis.get_legend_handles_labels()[0]:  # an experiment without finished runs draws nothing to name
        axis.legend(fontsize=7)


def finish_axis(axis, metric: Metric) -> None:
    """Labels, and an axis that shows chance and the baselines: hlines widen it; a score's axis starts at 0."""
    axis.set_ylabel(metric.label + (" (lower is better)" if not metric.higher_is_better else ""))
    if metric.higher_is_better:
        axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    legend(axis)


def plot_quality_vs_quantity(results: list[Result], sizes: dict[str, int], path: Path) -> None:
    groups = by_config(results, "exp2")
    panels = [exp2_metric(results), *PANELS[1:]]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    strategies = sorted({r.run.sets.get("sample.strategy") for rs in groups.values() for r in rs})
    for axis, metric in zip(axes, panels):
        labelled: set[str] = set()
        for strategy in strategies:
            for epoch, style in ((False, "-o"), (True, "s")):
                series = sorted(((sizes[g[0].run.sets["mix.pool"]], g) for g in groups.values() if g[0].run.sets.get("sample.strategy") == strategy
                                 and (g[0].run.sets.get("train.tokens", 0) is None) == epoch), key=lambda point: point[0])
                points = [(size, group, s) for size, group in series if (s := summarise(group, metric.key))]
                if points:
                    axis.errorbar([p[0] for p in points], [p[2].mean for p in points], yerr=[p[2].half_width for p in points], fmt=style,
                                  capsize=3, label=f"{strategy}, {'one epoch' if epoch else 'equal compute'}")
                for size, group, _ in points:
                    draw_baselines(axis, group, metric, size / 1.3, size * 1.3, labelled)
        axis.set_xscale("log")
        axis.set_xlabel("pool size (records, log scale)")
        finish_axis(axis, metric)
    figure.suptitle(f"exp2: quality against quantity ({ERROR_BARS}; each point's n-gram baselines and chance as horizontal lines)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_mix(results: list[Result], path: Path) -> None:
    groups = by_config(results, "exp3")
    names = list(groups)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.5), constrained_layout=True)
    for axis, metric in zip(axes, PANELS):
        shown = [(i, s) for i, name in enumerate(names) if (s := summarise(groups[name], metric.key))]
        axis.errorbar([i for i, _ in shown], [s.mean for _, s in shown], yerr=[s.half_width for _, s in shown], fmt="o", capsize=3,
                      color="tab:blue", label="model")
        labelled: set[str] = set()
        for i, name in enumerate(names):
            draw_baselines(axis, groups[name], metric, i - 0.4, i + 0.4, labelled)
        axis.set_xticks(range(len(names)), [name + (" (no signal)" if config_signal(groups[name]).label == NO_SIGNAL else "") for name in names],
                        rotation=30, ha="right")
        finish_axis(axis, metric)
    figure.suptitle(f"exp3: mixing strategies at an equal token budget ({ERROR_BARS}; n-gram baselines and chance per mix)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_correlation(table: dict, path: Path) -> None:
    grid = np.array([[table[c.key, r.key][0] if table.get((c.key, r.key)) else np.nan for r in REFERENCES] for c in CHEAP])
    figure, axis = plt.subplots(figsize=(1.1 * len(REFERENCES) + 3, 0.5 * len(CHEAP) + 2), constrained_layout=True)
    image = axis.imshow(np.nan_to_num(grid, nan=0.0), cmap="RdBu", vmin=-1, vmax=1)
    for i in range(len(CHEAP)):
        for j in range(len(REFERENCES)):
            axis.text(j, i, "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(REFERENCES)), [r.label for r in REFERENCES], rotation=35, ha="right")
    axis.set_yticks(range(len(CHEAP)), [c.label + (" (negated)" if not c.higher_is_better else "") for c in CHEAP])
    figure.colorbar(image, label="Spearman rho over all runs")
    axis.set_title("exp4: cheap metrics (rows) against references (columns)\nn/a: the same value for every model, no ranking")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_loss_curves(results: list[Result], experiments: list[str], path: Path) -> None:
    figure, axes = plt.subplots(1, len(experiments), figsize=(5 * len(experiments), 4), constrained_layout=True, squeeze=False)
    for axis, experiment in zip(axes[0], experiments):
        groups = by_config(results, experiment)
        for config, group in groups.items():
            curves = [dict(r.loss_curve) for r in group if r.loss_curve]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:
                axis.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], label=config)
        for baseline in LOSS.baselines:  # on held-out data, so a reference level for the training loss, not its floor
            if level := summarise([r for group in groups.values() for r in group], baseline.key):
                color, style = LINE_STYLES[baseline.label.split()[0]]
                axis.axhline(level.mean, color=color, linestyle=style, label=f"held-out {baseline.label} (mean of runs)")
        experiment_runs = models([r for group in groups.values() for r in group])
        if without := sum(not r.loss_curve for r in experiment_runs):  # trained elsewhere before curves were committed
            axis.text(0.02, 0.02, f"{without} of {len(experiment_runs)} runs: no recorded curve", transform=axis.transAxes, fontsize=8)
        axis.set_title(experiment)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("training loss (nats/token, mean over seeds)")
        axis.grid(alpha=0.3)
        legend(axis)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- the markdown -------------------------------------------------------------------------------
BASELINE_KEYS = {b.key for m in (*CHEAP, *REFERENCES) for b in m.baselines}


def table(groups: dict[str, list[Result]]) -> list[str]:
    if not groups:
        return ["No finished run yet."]
    metrics = [m for m in TABLE if any(summarise(g, m.key) for g in groups.values())]
    arrow = lambda m: "" if m.higher_is_better or m is TRAINING_TOKENS or m.key in BASELINE_KEYS else " ↓"
    lines = ["| run | seeds | signal | " + " | ".join(m.label + arrow(m) for m in metrics) + " |", "|---|---:|---|" + "---:|" * len(metrics)]
    for config, group in groups.items():
        cells = [(s.text(m.digits) if (s := summarise(group, m.key)) else "–") for m in metrics]
        lines.append(f"| {config} | {len(group)} | {signal_cell(group)} | " + " | ".join(cells) + " |")
    return lines


def category_prefixes(results: list[Result]) -> list[str]:
    """``heldout_<source>_<category>`` of every category loss any run measured."""
    return sorted({key.removesuffix("_loss") for r in results for key in r.metrics if CATEGORY_LOSS.fullmatch(key)})


CATEGORY_COLUMNS = (("_loss", "model"), ("_bigram_loss", "bigram"), ("_unigram_loss", "unigram"))


def category_table(groups: dict[str, list[Result]]) -> list[str]:
    """Held-out loss per source and category next to its n-gram baselines: what 'no signal' is judged on."""
    prefixes = category_prefixes([r for group in groups.values() for r in group])
    if not prefixes:
        return []
    lines = ["", f"Held-out loss (nats/token) by source and category, next to the bigram and unigram models fitted on each run's "
             f"training tokens; a run has no signal where its loss is not {BIGRAM_MARGIN} below the bigram's ('–': not measured, "
             "as in runs from before the eval fitted the baselines).", "",
             "| run | " + " | ".join(f"{prefix.removeprefix('heldout_')} {name}" for prefix in prefixes for _, name in CATEGORY_COLUMNS) + " |",
             "|---|" + "---:|" * (len(prefixes) * len(CATEGORY_COLUMNS))]
    for config, group in groups.items():
        cells = [(s.text() if (s := summarise(group, prefix + suffix)) else "–") for prefix in prefixes for suffix, _ in CATEGORY_COLUMNS]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return lines


def equal_compute(results: list[Result]) -> dict[str, list[Result]]:
    """exp2's configurations at the fixed token budget (not one epoch of their pool)."""
    return {config: group for config, group in by_config(results, "exp2").items() if not config.endswith("epoch")}


def answer_quality(results: list[Result], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    family, budgeted = Family(by_config(results, "exp2"), exp2_metric(results)), equal_compute(results)
    ranking, lead = family.ranking(list(budgeted))
    if ranking is None:
        return [f"exp2: {lead}."], []
    lines, surprises = [f"At equal compute, {lead}."], []
    pools = sorted({r.run.sets["mix.pool"] for g in budgeted.values() for r in g}, key=sizes.get)
    for pool in pools:
        curated, noisy = f"{pool}-top_quality", f"{pool}-random"
        if curated in family.groups and noisy in family.groups:
            comparison, words = family.compare(curated, noisy)
            lines.append(f"Curated against random at equal size ({pool}): {words}.")
            if comparison and comparison.significant and comparison.difference > 0:
                surprises.append(f"At {pool}, random sampling beat top_quality on {family.metric.label} ({words}).")
    if "10K-top_quality" in family.groups and "1M-random" in family.groups:
        comparison, words = family.compare("10K-top_quality", "1M-random")
        if comparison:
            beats = comparison.significant and comparison.difference < 0
            lines.append(f"The curated 10K {'beats' if beats else 'does not beat'} the noisy 1M at equal compute ({words}).")
            if not beats:
                surprises.append(f"The curated 10K did not beat the noisy 1M pool at equal compute ({words}).")
        else:
            lines.append(f"The curated 10K against the noisy 1M: {words}.")
    for strategy in ("top_quality", "random"):
        small, large = (f"{pool}-{strategy}" for pool in (pools[0], pools[-1]))
        if small != large and small in family.groups and large in family.groups:
            lines.append(f"More data at equal strategy ({strategy}): {family.compare(large, small)[1]}.")
    capabilities = [f"{metric.label}: {Family(family.groups, metric).ranking(list(budgeted))[1]}" for metric in CAPABILITIES
                    if all(metric.key in r.metrics for group in budgeted.values() for r in group)]
    if capabilities:
        lines.append("What each sample buys, by capability: " + "; ".join(capabilities) + ".")
    for strategy in ("top_quality", "random"):
        epoch, budget = f"10K-{strategy}-epoch", f"10K-{strategy}"
        if epoch in family.groups and budget in family.groups:
            tokens = summarise(family.groups[epoch], TRAINING_TOKENS.key)
            lines.append(f"One epoch of 10K {strategy} ({tokens.mean:,.0f} tokens) against the fixed budget: {family.compare(epoch, budget)[1]}.")
    return lines, surprises


def answer_mix(results: list[Result]) -> tuple[list[str], list[str]]:
    groups = by_config(results, "exp3")
    ranking, lead = Family(groups, PRIMARY).ranking()
    if ranking is None:
        return [f"exp3: {lead}."], []
    lines = [f"Among the mixes, {lead}; the highest is {ranking.order[-1]} ({ranking.intervals[ranking.order[-1]].text()})."]
    surprises = []
    capabilities = []
    for metric in CAPABILITIES:
        if all(metric.key in r.metrics for group in groups.values() for r in group):
            capabilities.append(f"{metric.label}: {Family(groups, metric).ranking()[1]}")
    if capabilities:
        lines.append("What each mix buys, by capability: " + "; ".join(capabilities) + ".")
    for metric in (BENCHMARK_MEAN, COHERENCE):
        other, words = Family(groups, metric).ranking()
        lines.append(f"By {metric.label}: {words}.")
        if other and ranking.leader and other.leader and other.leader != ranking.leader:
            surprises.append(f"The best mix by held-out bpb ({ranking.leader}) is not the best by {metric.label} ({other.leader}).")
    return lines, surprises


# exp1's controls: the same compute on ...
EXP1_CONTROLS = {"mixed": "the same compute on the plan mix", "human": "the same compute on human-written text",
                 "distilled": "the same compute on a real teacher's Self-Instruct data (SmolLM2-135M-Instruct)"}
EXP1_OUTSIDERS = {"human": "human-text model", "distilled": "model trained on the teacher's data"}  # trained on no world text


def answer_synthetic(results: list[Result]) -> list[str]:
    """exp1: the model trained on synthetic instruction data alone against the controls, the same compute on the
    plan's mix of the same pool and on human-written text, on the instruction held-out data and the task families."""
    groups = by_config(results, "exp1")
    pure = groups.get("instruction_only")
    if not pure:
        return ["exp1 has not finished."]
    shown = (TASKS, *TASK_METRICS, INSTRUCTION_CLEAN_BPB, BIGRAM_BPB, BENCHMARK_MEAN, BENCHMARK_CHANCE)
    facts = ", ".join(f"{m.label} {s.text(m.digits)}" for m in shown if (s := summarise(pure, m.key)))
    verdict = config_signal(pure)
    if verdict.label == NO_SIGNAL:
        return [f"No signal at this profile's scale: trained on instruction data alone, the model shows no signal "
                f"({'; '.join(verdict.reasons)}), so no conclusion is drawn from it ({facts})." + answer_distillation(results)]
    opening = "Partly" if verdict.label == SIGNAL else f"Undecided, as its signal is unknown ({'; '.join(verdict.reasons)})"
    words = [f"{opening}: trained on synthetic instruction data alone (the curated 100K pool), the model reaches {facts}"]
    for control, what in EXP1_CONTROLS.items():
        if control in groups:
            for metric in (INSTRUCTION_CLEAN_BPB, *TASK_METRICS):
                words.append(f"; {metric.label}, against {what}: "
                             f"{Family({'instruction_only': pure, control: groups[control]}, metric).compare('instruction_only', control)[1]}")
    outsiders = [EXP1_OUTSIDERS[config] for config in EXP1_OUTSIDERS if config in groups]
    if outsiders:
        words.append(f". The {' and '.join(outsiders)} never saw the fictional world the held-out sets and tasks are about: "
                     "they show what language alone, without the world's facts, gives on them")
    return ["".join(words) + "." + answer_distillation(results)]


DISTILLATION_REPLIES = (PREFERENCE, COHERENCE, RELEVANCE)


def beats_bigram(result: Result, category: str) -> bool:
    """The signal rule's test (statistics.categories_at_bigram) on one category, which must have a bigram baseline."""
    flat = categories_at_bigram(result.metrics)
    return f"heldout_{category}_bigram_loss" in result.metrics and flat is not None and category not in flat


def answer_distillation(results: list[Result]) -> str:
    """exp1's distilled arm against the human arm: both never saw the world, so the signal rule (every category
    below its bigram) rules both out, yet both learn the instruction category's language. They are compared there,
    where every run of both beats the bigram model of its own training tokens, and on the judges of their replies;
    Holm over the metrics compared."""
    groups = by_config(results, "exp1")
    if not groups.get("distilled") or not groups.get("human"):
        return ""
    metrics = list(DISTILLATION_REPLIES)
    instruction = "clean_instruction"
    learned = all(beats_bigram(r, instruction) for r in groups["distilled"] + groups["human"])
    if learned:
        metrics.insert(0, INSTRUCTION_CLEAN_BPB)
    values = {m: {config: [r.metrics[m.key] for r in groups[config] if m.key in r.metrics] for config in ("distilled", "human")} for m in metrics}
    metrics = [m for m in metrics if all(len(v) >= 2 for v in values[m].values())]
    if not metrics:
        return ""
    raw = [welch(values[m]["distilled"], values[m]["human"]) for m in metrics]
    tests = {m: replace(test, adjusted=adjusted) for m, test, adjusted in zip(metrics, raw, holm([t.p for t in raw]))}
    parts = [f"{m.label} {t_interval(values[m]['distilled']).text(m.digits)} against {t_interval(values[m]['human']).text(m.digits)}, "
             f"{tests[m].text(m.digits)}" for m in metrics]
    bigram = INSTRUCTION_CLEAN_BPB.baselines[1]
    bigrams = " and ".join(s.text(bigram.digits) for config in ("distilled", "human") if (s := summarise(groups[config], bigram.key)))
    where = (f"on the clean instruction held-out set, where every run of both beats the bigram model of its own training tokens "
             f"({bigram.label}: {bigrams}), and on the judges of their replies" if learned else
             "on the judges of their replies (not on held-out loss: some run of either is not below its bigram model there)")
    significant = [m.label for m in metrics if tests[m].significant]
    verdict = (f"significant on {', '.join(significant)}" if significant else
               "no significant difference on any: at this scale the teacher's data and human text are tied")
    return (f" Distillation: the student of the real teacher's data against the same compute on human-written text (neither saw "
            f"the world, so both have no signal by the rule above), compared {where}, Holm over these {len(metrics)} metrics: "
            + "; ".join(parts) + f". Verdict: {verdict}.")


def real_reference_lines(path: Path = JUDGE_CHECK) -> list[str]:
    """exp4's first answer: the cheap metrics against GPT-4-turbo on real chat
    models (metrics/judge_check.json), where the models span a real capability range."""
    if not path.is_file():
        return [f"{path} is missing: run `dvc repro judge_check` for the cheap metrics against GPT-4 on real chat models."]
    check = json.loads(path.read_text())
    metrics, models = check["metrics"], check["reference"]["models"]
    cell = lambda name, target: (f"{v['spearman']:.2f} [{v['spearman_ci95'][0]:.2f}, {v['spearman_ci95'][1]:.2f}]"
                                 if (v := metrics[name][target]).get("spearman") is not None else "n/a (no variance)")
    ranked = sorted(metrics, key=lambda name: metrics[name]["length_controlled_winrate"].get("spearman") or -1, reverse=True)
    lines = [f"On {models} real chat models judged by GPT-4-turbo (AlpacaEval 2.0; `metrics/judge_check.json`), Spearman rho "
             "against the win rate / the length-controlled win rate, learned judges scored only on models they never saw:"]
    lines += [f"{name} {cell(name, 'win_rate')} / {cell(name, 'length_controlled_winrate')};" for name in ranked]
    lines.append("average length, the baseline to beat, is "
                 f"{cell('length_chars', 'win_rate')} / {cell('length_chars', 'length_controlled_winrate')}.")
    return lines


def answer_correlation(table: dict, results: list[Result]) -> tuple[list[str], list[str]]:
    constant = [m.label for m in REFERENCES if all(table.get((c.key, m.key)) is None for c in CHEAP)]
    constant += [m.label for m in CHEAP if all(table.get((m.key, r.key)) is None for r in REFERENCES)]
    cleared = [(c, r, v) for (ck, rk), v in table.items() if v for c in CHEAP if c.key == ck for r in REFERENCES if r.key == rk and v[0] > RHO_BAR]
    lines = real_reference_lines()
    population = models(results)
    if len(population) < MIN_MODELS:
        lines.append(f"Within this project's own models: {len(population)} finished, fewer than the {MIN_MODELS} a rank correlation "
                     "needs, so none is computed yet.")
        return lines, []
    spanned = lambda key: sorted({r.run.sets[key] for r in population if r.run.sets.get(key) is not None}, key=str)
    lines.append(f"Within this project's own {len(population)} models (every exp1-exp4 model once; presets {', '.join(spanned('train.model'))}; "
                 f"training tokens {', '.join(f'{tokens:,}' for tokens in sorted(spanned('train.tokens')))}), {len(cleared)} cheap "
                 f"metric/reference pairs have Spearman rho above {RHO_BAR}"
                 + (": " + "; ".join(f"{c.label} ~ {r.label} {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" for c, r, v in cleared) if cleared else "") + ".")
    if constant:
        lines.append(f"Degenerate, so not correlated: {', '.join(constant)} (the same value for every model).")
    usable = [(c, v) for c in CHEAP if (v := table.get((c.key, "benchmark_mean")))]
    if usable:
        c, v = max(usable, key=lambda item: item[1][0])
        lines.append(f"Against the benchmark mean the best cheap metric is {c.label}: rho {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}].")
    surprises = [] if cleared else [f"No cheap metric clears rho {RHO_BAR} against any reference."]
    return lines, surprises


def judged_empty_replies(results: list[Result]) -> list[str]:
    """A judge that calls empty replies coherent is measuring the absence of errors, not quality."""
    empty = [r for r in results if r.metrics.get("reply_empty_rate", 0.0) == 1.0]
    coherence = summarise(empty, COHERENCE.key)
    if not empty or coherence is None or coherence.mean < 0.5:
        return []
    return [f"{len(empty)} of {len(results)} models reply with no words at all (reply_empty_rate 1; they emit only "
            f"whitespace or special tokens), yet the coherence judge scores them {coherence.text(3)}: an empty reply has "
            "none of the flaws it was trained to catch."]


# --- the research plan's expected outcomes -----------------------------------------------------
def all_configs(results: list[Result]) -> dict[str, list[Result]]:
    """Every configuration of every experiment, as ``<experiment>/<config>``."""
    groups: dict[str, list[Result]] = {}
    for result in results:
        groups.setdefault(f"{result.run.experiment}/{result.run.config}", []).append(result)
    return groups


def expected_perplexity(results: list[Result]) -> tuple[str, str]:
    """The lowest held-out perplexity of a configuration with signal: exp of the loss, with its interval mapped through exp."""
    measured = {config: group for config, group in all_configs(results).items() if summarise(group, LOSS.key)}
    candidates = {config: summarise(group, LOSS.key) for config, group in measured.items() if config_signal(group).label != NO_SIGNAL}
    if not candidates:
        return ("no configuration with signal", "no signal") if measured else ("no held-out loss", "not measured")
    best = min(candidates, key=lambda config: candidates[config].mean)
    loss = candidates[best]
    perplexity = Interval(math.exp(loss.mean), math.exp(loss.low), math.exp(loss.high), loss.n)
    unknown = "; its signal is unknown" if config_signal(measured[best]).label == UNKNOWN else ""
    return (f"{best}: {perplexity.text(1)} (exp of the held-out loss; the lowest of the configurations not labelled no signal{unknown})",
            threshold_verdict(perplexity, PERPLEXITY_BAR, below=True))


def exp2_metric(results: list[Result]) -> Metric:
    """exp2's yardstick: the clean held-out bits per byte where every run measured it (a sample is not judged by its
    distance to flawed text), else the held-out bits per byte of all records (runs from before the clean set)."""
    return CLEAN_BPB if all(CLEAN_BPB.key in r.metrics for r in results if r.run.experiment == "exp2") else PRIMARY


def pool_shares(results: list[Result], sizes: dict[str, int]) -> tuple[str, dict[str, Interval]] | str:
    """(the best configuration, pool -> the 95 % interval over seeds of the share of its gain over the unigram
    baseline that the best configuration on that pool reaches), pools by size; or why there is none."""
    groups = {config: group for config, group in equal_compute(results).items() if config_signal(group).label != NO_SIGNAL}
    if not groups:
        return "exp2 has not run" if not equal_compute(results) else "no signal"
    metric = exp2_metric(results)
    unigram = metric.baselines[0].key
    gains = {config: [r.metrics[unigram] - r.metrics[metric.key] for r in group if unigram in r.metrics and metric.key in r.metrics]
             for config, group in groups.items()}
    if not all(gains.values()):
        return "unigram baselines unknown (runs from before the eval fitted them)"
    mean_gain = {config: float(np.mean(values)) for config, values in gains.items()}
    best = max(mean_gain, key=mean_gain.get)
    by_pool: dict[str, str] = {}  # pool -> its configuration with the largest mean gain
    for config in sorted(groups, key=mean_gain.get):
        by_pool[groups[config][0].run.sets["mix.pool"]] = config
    return best, {pool: t_interval([gain / mean_gain[best] for gain in gains[by_pool[pool]]]) for pool in sorted(by_pool, key=sizes.get)}


def expected_pool(results: list[Result], sizes: dict[str, int]) -> tuple[str, str]:
    """The samples needed for SHARE_BAR of the best equal-compute exp2 configuration's gain over its unigram
    baseline: the smallest pool whose mean share reaches it, bracketed by the smallest whose interval reaches it and
    the smallest whose whole interval is above it. Met when that bracket includes the plan's EXPECTED_POOL."""
    found = pool_shares(results, sizes)
    if isinstance(found, str):
        return found, "no signal" if found == "no signal" else "not measured"
    best, shares = found
    if len(shares) < 2:  # a share of the best across pools needs a second pool with signal
        return f"only the {next(iter(shares))} pool has runs with signal ({best}): no second pool to compare", "no signal"
    reached = lambda test: next((pool for pool, share in shares.items() if test(share)), None)
    needed, lowest, surely = reached(lambda s: s.mean >= SHARE_BAR), reached(lambda s: s.high >= SHARE_BAR), reached(lambda s: s.low >= SHARE_BAR)
    listing = ", ".join(f"{pool} {share.mean:.0%} [{share.low:.0%}, {share.high:.0%}]" for pool, share in shares.items())
    metric = exp2_metric(results).label
    text = (f"{needed or 'more than ' + list(shares)[-1]} records (between {lowest or '?'} and {surely or 'more than ' + list(shares)[-1]}); "
            f"share of {best}'s gain over the unigram baseline in {metric}, per pool: {listing}")
    if lowest is None or surely is None or any(share.n < 2 for share in shares.values()):
        return text, "tied" if lowest is not None else "not met"
    return text, "met" if sizes[lowest] <= EXPECTED_POOL <= sizes[surely] else "not met"


def expected_mix(results: list[Result]) -> tuple[str, str]:
    groups = by_config(results, "exp3")
    if PLAN_MIX not in groups:
        return f"{PLAN_MIX} has not run", "not measured"
    family = Family(groups, PRIMARY)
    if family.signals[PLAN_MIX].label == NO_SIGNAL:
        return f"{PLAN_MIX}: no signal ({'; '.join(family.signals[PLAN_MIX].reasons)})", "no signal"
    ranking, words = family.ranking()
    if ranking is None:
        return words, "not measured"
    return f"by held-out bits/byte, {words}", "met" if ranking.leader == PLAN_MIX else "tied" if PLAN_MIX in ranking.tied else "not met"


def expected_judge_agreement(path: Path = JUDGE_CHECK) -> tuple[str, str]:
    """The best cheap metric of the judge_check stage against GPT-4-turbo's win rate, the stand-in for human judgement."""
    if not path.is_file():
        return f"{path} is missing (`dvc repro judge_check`)", "not measured"
    check = json.loads(path.read_text())
    scored = {name: entry["win_rate"] for name, entry in check["metrics"].items() if entry["win_rate"].get("spearman") is not None}
    if not scored:
        return f"no cheap metric ranks the models in {path} (the same value for every model)", "not measured"
    words = lambda name: f"{name} {scored[name]['spearman']:.2f} [{scored[name]['spearman_ci95'][0]:.2f}, {scored[name]['spearman_ci95'][1]:.2f}]"
    best = max(scored, key=lambda name: scored[name]["spearman"])
    measured = (f"Spearman rho against the GPT-4-turbo win rate (AlpacaEval 2.0) on {check['reference']['models']} chat models, "
                f"best cheap metric: {words(best)}")
    if (untrained := check.get("best_cheap_metric_without_training")) in scored and untrained != best:
        measured += f"; best without a trained judge: {words(untrained)}"
    rho = Interval(scored[best]["spearman"], *scored[best]["spearman_ci95"], check["reference"]["models"])
    return measured, threshold_verdict(rho, RHO_BAR, below=False)


def unfinished(definition, results: list[Result]) -> dict[str, list[str]]:
    """experiment -> its configurations that have no finished run yet: an answer over the others is partial."""
    finished = {(r.run.experiment, r.run.config) for r in results}
    pending: dict[str, list[str]] = {}
    for run in expand(definition):
        if (run.experiment, run.config) not in finished and run.config not in pending.setdefault(run.experiment, []):
            pending[run.experiment].append(run.config)
    return pending


def partial(experiment: str, pending: dict[str, list[str]], results: list[Result]) -> str | None:
    """Why an expectation over the whole experiment cannot be judged yet, or None when every configuration has run."""
    if not pending.get(experiment):
        return None
    ran = len(by_config(results, experiment))
    return f"{ran} of {ran + len(pending[experiment])} configurations of {experiment} have run (not yet: {', '.join(pending[experiment])})"


def expectations(results: list[Result], sizes: dict[str, int], pending: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(expectation of the research plan, what was measured, verdict) for each of the plan's expected outcomes."""
    waiting = lambda experiment, judged: (why, "not measured") if (why := partial(experiment, pending, results)) else judged()
    return [(f"validation perplexity < {PERPLEXITY_BAR}", *expected_perplexity(results)),
            (f"~{EXPECTED_POOL // 1000}K samples give {SHARE_BAR:.0%} of the best", *waiting("exp2", lambda: expected_pool(results, sizes))),
            ("the 40/30/30 mix is optimal", *waiting("exp3", lambda: expected_mix(results))),
            (f"zero-cost metrics correlate > {RHO_BAR} with human judgement", *expected_judge_agreement())]


def unexpected(rows: list[tuple[str, str, str]]) -> list[str]:
    """The surprises among the expected outcomes: every one measured and not met (tied and no signal included)."""
    return [f"The research plan expected {a}; measured: {c} ({b})." for a, b, c in rows if c not in ("met", "not measured")]


def expected_outcomes(rows: list[tuple[str, str, str]]) -> list[str]:
    return ["| expectation (research plan) | measured | verdict |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows),
            "", "met / not met: the whole 95 % interval is on one side of the bar; tied: it includes the bar (or the best is tied with "
            "others); no signal: the runs it rests on do not beat their baselines; not measured: no run answers it."]


# --- the report ---------------------------------------------------------------------------------
def signal_summary(results: list[Result]) -> str:
    counts = Counter(signal(r.metrics).label for r in results)
    text = f"Of the {len(results)} runs, {counts[SIGNAL]} show signal, {counts[NO_SIGNAL]} no signal and {counts[UNKNOWN]} are unknown"
    if counts[UNKNOWN]:
        text += " (evaluated without the n-gram baselines or accuracies their label needs)"
    return text + "."


def markdown(definition, results: list[Result], missing: list[str], table_rho: dict, profile: str, plots: Path, sizes: dict[str, int]) -> str:
    pending = unfinished(definition, results)
    q2, s2 = answer_quality(results, sizes)
    q3, s3 = answer_mix(results)
    q2, q3 = ([f"Partial: {why}."] + lines if (why := partial(experiment, pending, results)) else lines for experiment, lines in (("exp2", q2), ("exp3", q3)))
    q4, s4 = answer_correlation(table_rho, results)
    outcomes = expectations(results, sizes, pending)
    out = [f"# Results of the research experiments ({profile} profile)", "",
           f"Generated by `python -m research.report --profile {profile}` from {len(results)} finished runs "
           f"(`dvc exp show -A`); every number below is in the tables that follow. "
           "Values are means over seeds with their 95 % t-interval, mean [low, high]. Configurations are compared by Welch's t-test over "
           "seeds, with Holm's correction over every pair of configurations of an experiment (per metric): a leader is named only when it "
           "differs significantly from every other configuration; otherwise every configuration not significantly different from the best "
           f"is listed as tied, with *needs {SEEDS_NEEDED} seeds* where the leading difference's interval includes 0 at fewer seeds. "
           f"A run has *no signal* when its held-out loss on some category is not {BIGRAM_MARGIN} nats below a bigram model fitted on its "
           "own training tokens, or when every task family and benchmark is at chance; no conclusion is drawn from a configuration "
           "whose runs all have no signal.", "", signal_summary(results), "",
           "## Answers", "",
           f"1. **{definition.experiments['exp1'].question}** " + " ".join(answer_synthetic(results)) if "exp1" in definition.experiments else "",
           f"2. **{definition.experiments['exp2'].question}** " + " ".join(q2) if "exp2" in definition.experiments else "",
           f"3. **{definition.experiments['exp3'].question}** " + " ".join(q3) if "exp3" in definition.experiments else "",
           "4. **How well do zero-cost metrics agree with a reference?** " + " ".join(q4), "",
           "## Expected outcomes", "", *expected_outcomes(outcomes), "",
           "## Surprises", ""]
    surprises = unexpected(outcomes) + s2 + s3 + s4 + judged_empty_replies(results)
    nothing = "every comparison measured so far" if any(verdict == "not measured" for *_, verdict in outcomes) else "every comparison"
    out += [f"- {s}" for s in surprises] or [f"- None: {nothing} went the way the research plan expected."]
    for name, spec in definition.experiments.items():
        out += ["", f"## {name}: {spec.question}", "", *table(by_config(results, name)), *category_table(by_config(results, name))]
    without_curve = [r.run.name for r in models(results) if not r.loss_curve]
    out += ["", "Plots: " + ", ".join(f"[{p}]({Path('..') / plots / p})" for p in ("quality_vs_quantity.png", "mix.png", "correlation.png", "loss_curves.png")),
            f"The loss curves are means over the runs whose curve is recorded (loss_curves.csv); {len(without_curve)} of "
            f"{len(models(results))} runs have none: they trained on a machine that is gone, before their curves were committed "
            "(their curves are in the git history of loss_curves.png)." if without_curve else None,
            "", "## exp4: Spearman rho of each cheap metric against each reference (95% bootstrap interval)", "",
            "| cheap metric | " + " | ".join(r.label for r in REFERENCES) + " |", "|---|" + "---:|" * len(REFERENCES)]
    for cheap in CHEAP:
        cells = [(f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" if (v := table_rho.get((cheap.key, r.key))) else "n/a") for r in REFERENCES]
        out.append(f"| {cheap.label}{' (negated)' if not cheap.higher_is_better else ''} | " + " | ".join(cells) + " |")
    out += ["", "n/a: the cheap metric or the reference is the same for every model (no ranking). Cheap metrics where lower is better "
            "are negated, so + means agreement.",
            "", "## Runs", "", f"{len(results)} finished" + (f"; missing or failed: {', '.join(missing)}" if missing else "") + "."]
    return "\n".join(line for line in out if line is not None) + "\n"


def csv_keys(results: list[Result]) -> list[str]:
    """The metrics of runs.csv: the report's, their baselines and chance levels, the task families, and every category's loss and baselines."""
    metrics = [TRAINING_TOKENS, *CHEAP, *REFERENCES]
    metrics += [CLEAN_BPB, *CLEAN_CATEGORY_BPB]
    keys = ([m.key for m in metrics] + [b.key for m in metrics for b in m.baselines]
            + [f"tasks_{family}_{what}" for family in TASK_FAMILIES for what in ("accuracy", "chance", "items")]
            + [key.removesuffix("_acc") + "_items" for key in BENCHMARKS] + ["reply_empty_rate", "response_words"])
    return list(dict.fromkeys(keys + [prefix + suffix for prefix in category_prefixes(results) for suffix, _ in CATEGORY_COLUMNS]))


def write_runs_csv(results: list[Result], path: Path) -> None:
    """Add or replace the results' rows; rows of runs that finished elsewhere (another machine) stay."""
    keys = csv_keys(results)
    rows = []
    for r in models(results):
        label = signal(r.metrics)
        rows.append({"name": r.run.name, "experiment": r.run.experiment, "config": r.run.config, "seed": str(r.run.seed), "rev": r.rev[:7],
                     **{k: f"{r.metrics[k]:.6g}" if k in r.metrics else "" for k in keys},
                     "signal": label.label, "signal_reasons": "; ".join(label.reasons)})
    save_rows(path, [*IDENTITY_COLUMNS, *keys, *LABEL_COLUMNS], rows)


def record_runs(profile: str, path: Path, rev: str | None = None) -> list[Result]:
    """Only the rows of runs.csv, of the runs based on the commit ``rev`` (research.experiments run calls it after each
    run with the commit the run started from: HEAD may have moved since)."""
    results, _ = collect(expand(load_definition(profile)), all_commits=False, rev=rev)  # not rows: it writes them
    write_runs_csv(results, path)
    write_curves(results, curves_path(path))
    return results


def report(profile: str, out: Path, plots: Path, sizes: dict[str, int]) -> tuple[list[Result], list[str]]:
    definition = load_definition(profile)
    results, missing = collect(expand(definition), rows=out.with_name("runs.csv"))
    if not results:
        raise StageError(f"no finished experiment of the {profile} profile: run `make experiments` (or `make exp1` ...) first")
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    table_rho = correlations(results)
    plot_quality_vs_quantity(results, sizes, plots / "quality_vs_quantity.png")
    plot_mix(results, plots / "mix.png")
    plot_correlation(table_rho, plots / "correlation.png")
    plot_loss_curves(results, list(definition.experiments), plots / "loss_curves.png")
    out.write_text(markdown(definition, results, missing, table_rho, profile, plots, sizes))
    write_runs_csv(results, out.with_name("runs.csv"))
    write_curves(results, curves_path(out.with_name("runs.csv")))
    return results, missing


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Plots and a results table from the research experiments")
    parser.add_argument("--profile", default="cpu", help="experiments/<profile>.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, help="default: reports/results.md, reports/<profile>/results.md for other profiles")
    parser.add_argument("--plots", type=Path, default=Path("plots/report"))
    parser.add_argument("--runs-only", action="store_true", help="only add the rows of the runs based on --rev to runs.csv")
    parser.add_argument("--rev", help="--runs-only: the commit the runs started from (default HEAD)")
    args = parser.parse_args(argv)
    args.out = args.out or report_dir(args.profile) / "results.md"
    if args.runs_only:
        results = record_runs(args.profile, args.out.with_name("runs.csv"), args.rev)
        print(f"report: {len(results)} runs finished on {args.rev or 'HEAD'} -> {args.out.with_name('runs.csv')}")
        return
    results, missing = report(args.profile, args.out, args.plots, load_params(args.params).sample.sizes)
    print(f"report: {len(results)} runs ({len(missing)} missing or failed) -> {args.out}, {args.out.with_name('runs.csv')}, {args.plots}/*.png")


if __name__ == "__main__":
    run_stage(main)
