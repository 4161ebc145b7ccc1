"""report: the research experiments' results, from ``dvc exp show``, as plots and a results table.

    python -m research.report [--profile cpu] [--out reports/results.md] [--plots plots/report] [--runs-only]

Reads the runs of ``experiments/<profile>.yaml`` from ``dvc exp show --json -A``
(the newest where a name ran twice) and writes ``reports/results.md``,
``reports/runs.csv`` (adding rows, keeping those of runs from other machines) and
``plots/report/*.png``; the statistics are in docs/experiments.md. Profiles other
than cpu write to ``reports/<profile>/``. ``--runs-only`` adds the rows of the runs
finished on HEAD to runs.csv and nothing else.
"""

import argparse
import csv
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from synthtrain.experiments import ExperimentRun, expand, load_definition, report_dir, save_rows  # noqa: E402
from synthtrain.params import StageError, load_params  # noqa: E402
from synthtrain.cli import run_stage  # noqa: E402


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    digits: int = 3


# exp4's cheap metrics: computed without a reference model or paid API.
CHEAP = [
    Metric("heldout_loss", "held-out loss (nats/token)", False),
    Metric("heldout_bpb", "held-out bits/byte", False),
    Metric("rougeL", "ROUGE-L", True),
    Metric("diversity_distinct_2", "distinct-2", True),
    Metric("diversity_repetition_rate", "replies in loops", False),
    Metric("judge_relevance_score", "judge: relevance", True),
    Metric("judge_coherence_score", "judge: coherence", True),
    Metric("judge_preference_rank_length_controlled", "preference judge (LC)", True),
    Metric("behaviour_mft_pass_rate", "MFT pass rate", True),
    Metric("behaviour_inv_consistency", "INV consistency", True),
]
# exp4's references: verifiable answers of the built-in world, and lm-eval benchmarks.
BENCHMARKS = ["blimp_acc", "arc_easy_acc", "piqa_acc", "winogrande_acc", "hellaswag_acc", "lambada_acc"]
REFERENCES = [
    Metric("tasks_accuracy", "task accuracy", True),
    *(Metric(key, key.removesuffix("_acc").replace("_", "-") + " acc", True) for key in BENCHMARKS),
    Metric("benchmark_mean", "benchmark mean acc", True),
]
TRAINING_TOKENS = Metric("training_tokens", "training tokens", True, 0)
REPLY_WORDS = Metric("response_words", "reply words", True, 1)
BENCHMARK_CHANCE = Metric("benchmark_chance", "benchmark chance", True)
TABLE = [TRAINING_TOKENS, CHEAP[1], CHEAP[0], REFERENCES[0], REFERENCES[-1], BENCHMARK_CHANCE, REFERENCES[1], CHEAP[6], CHEAP[5], CHEAP[2],
         CHEAP[3], CHEAP[7], REPLY_WORDS]
PRIMARY = CHEAP[1]  # held-out bits per byte: the one metric every run measures on the same data, with a clear scale
RHO_BAR = 0.8  # the research plan's bar for a cheap metric to stand in for a reference
BOOTSTRAP = 2000
JUDGE_CHECK = Path("metrics/judge_check.json")  # the judge_check stage: the cheap metrics against GPT-4 on real chat models


@dataclass
class Result:
    run: ExperimentRun
    rev: str
    metrics: dict[str, float]
    loss_curve: list[tuple[int, float]] = field(default_factory=list)


def exp_show(all_commits: bool = True) -> list[dict]:
    """The experiments of every commit, or of HEAD only (seconds instead of minutes in a long history)."""
    shown = subprocess.run(["dvc", "exp", "show", "--json", *(["-A"] if all_commits else []), "--no-pager"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise StageError(f"dvc exp show failed: {shown.stderr.strip()}")
    return json.loads(shown.stdout)


def loss_curve(rev: str) -> list[tuple[int, float]]:
    shown = subprocess.run(["git", "show", f"{rev}:metrics/train/plots/metrics/train/loss.tsv"], capture_output=True, text=True)
    if shown.returncode != 0:
        return []
    return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(io.StringIO(shown.stdout), delimiter="\t")]


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


def collect(runs: list[ExperimentRun], all_commits: bool = True) -> tuple[list[Result], list[str]]:
    """Finished experiments named like ``runs`` (the newest of each name), and the names that are missing or failed."""
    wanted = {run.name: run for run in runs}
    newest: dict[str, tuple[str, dict]] = {}
    for commit in exp_show(all_commits):
        for experiment in commit.get("experiments") or []:
            name, executor = experiment.get("name"), experiment.get("executor")
            revision = (experiment.get("revs") or [{}])[0]
            data = revision.get("data")
            if name not in wanted or not data or revision.get("error") or (executor and executor.get("state") != "success"):
                continue
            if name not in newest or data["timestamp"] > newest[name][1]["timestamp"]:
                newest[name] = (revision["rev"], data)
    results, missing = [], []
    for name, run in wanted.items():
        metrics = run_metrics(newest[name][1]) if name in newest else {}
        if metrics:
            results.append(Result(run, newest[name][0], metrics, loss_curve(newest[name][0])))
        else:
            missing.append(name)
    return results, missing


# --- statistics ---------------------------------------------------------------------------------
@dataclass
class Summary:
    mean: float
    sd: float
    n: int

    def text(self, digits: int) -> str:
        if digits == 0:
            return f"{self.mean:,.0f}" + (f" ± {self.sd:,.0f}" if self.sd else "")
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def summarise(results: list[Result], key: str) -> Summary | None:
    values = [r.metrics[key] for r in results if key in r.metrics]
    if not values:
        return None
    return Summary(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))


def by_config(results: list[Result], experiment: str) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for result in results:
        if result.run.experiment == experiment:
            groups.setdefault(result.run.config, []).append(result)
    return groups


def compare(a: Summary, b: Summary) -> tuple[float, float, bool]:
    """(difference a - b, its standard error, whether it is beyond noise: more than 2 standard errors)."""
    se = float(np.sqrt(a.sd**2 / a.n + b.sd**2 / b.n))
    difference = a.mean - b.mean
    return difference, se, se > 0 and abs(difference) > 2 * se  # one seed each: no noise estimate, never "beyond"


def noise_words(a: Summary, b: Summary, digits: int) -> str:
    difference, se, beyond = compare(a, b)
    verdict = "beyond noise" if beyond else "within noise"
    return f"difference {difference:+.{digits}f}, {verdict} (2 SE = {2 * se:.{digits}f})"


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
            both = [r for r in results if cheap.key in r.metrics and reference.key in r.metrics]
            if len(both) < 3:
                table[cheap.key, reference.key] = None
                continue
            sign = 1.0 if cheap.higher_is_better else -1.0
            x = np.array([sign * r.metrics[cheap.key] for r in both])
            y = np.array([r.metrics[reference.key] for r in both])
            table[cheap.key, reference.key] = spearman(x, y, rng)
    return table


# --- plots --------------------------------------------------------------------------------------
PANELS = [PRIMARY, REFERENCES[-1], CHEAP[6]]  # held-out bpb, benchmark mean, coherence judge


def plot_quality_vs_quantity(results: list[Result], sizes: dict[str, int], path: Path) -> None:
    groups = by_config(results, "exp2")
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    strategies = sorted({r.run.sets.get("sample.strategy") for rs in groups.values() for r in rs})
    for axis, metric in zip(axes, PANELS):
        for strategy in strategies:
            for epoch, style in ((False, "-o"), (True, "s")):
                points = [(sizes[rs[0].run.sets["mix.pool"]], summarise(rs, metric.key)) for rs in groups.values()
                          if rs[0].run.sets.get("sample.strategy") == strategy and (rs[0].run.sets.get("train.tokens", 0) is None) == epoch]
                points = sorted((size, s) for size, s in points if s)
                if points:
                    axis.errorbar([p[0] for p in points], [p[1].mean for p in points], yerr=[p[1].sd for p in points], fmt=style,
                                  capsize=3, label=f"{strategy}, {'one epoch' if epoch else 'equal compute'}")
        axis.set_xscale("log")
        axis.set_xlabel("pool size (records, log scale)")
        axis.set_ylabel(metric.label + (" (lower is better)" if not metric.higher_is_better else ""))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("exp2: quality against quantity (mean ± sd over seeds)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_mix(results: list[Result], path: Path) -> None:
    groups = by_config(results, "exp3")
    names = list(groups)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    for axis, metric in zip(axes, PANELS):
        summaries = [summarise(groups[n], metric.key) for n in names]
        axis.barh(names, [s.mean if s else 0 for s in summaries], xerr=[s.sd if s else 0 for s in summaries], capsize=3, color="tab:blue")
        axis.set_xlabel(metric.label + (" (lower is better)" if not metric.higher_is_better else ""))
        low = min((s.mean - s.sd for s in summaries if s), default=0)
        high = max((s.mean + s.sd for s in summaries if s), default=1)
        axis.set_xlim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_ylabel("mix strategy")
    figure.suptitle("exp3: mixing strategies at an equal token budget (mean ± sd over seeds)")
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
        for config, group in by_config(results, experiment).items():
            curves = [dict(r.loss_curve) for r in group if r.loss_curve]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:
                axis.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], label=config)
        axis.set_title(experiment)
        axis.set_xlabel("step (8,192 tokens each)")
        axis.set_ylabel("training loss (nats/token, mean over seeds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- the markdown -------------------------------------------------------------------------------
def table(groups: dict[str, list[Result]]) -> list[str]:
    if not groups:
        return ["No finished run yet."]
    metrics = [m for m in TABLE if any(summarise(g, m.key) for g in groups.values())]
    lines = ["| run | seeds | " + " | ".join(m.label + ("" if m.higher_is_better or m is TRAINING_TOKENS else " ↓") for m in metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for config, group in groups.items():
        cells = [(s.text(m.digits) if (s := summarise(group, m.key)) else "–") for m in metrics]
        lines.append(f"| {config} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def best(groups: dict[str, list[Result]], metric: Metric) -> list[tuple[str, Summary]]:
    ranked = [(name, s) for name, g in groups.items() if (s := summarise(g, metric.key))]
    return sorted(ranked, key=lambda item: item[1].mean, reverse=metric.higher_is_better)


def leaders(groups: dict[str, list[Result]], experiment: str) -> tuple[list[tuple[str, Summary]], str]:
    """The configurations ranked by the primary metric, and a sentence on the first two."""
    ranked = best(groups, PRIMARY)
    if len(ranked) < 2:
        return ranked, f"{experiment} has fewer than two finished configurations."
    (first, a), (second, b) = ranked[0], ranked[1]
    return ranked, f"the lowest held-out bits per byte is **{first}** ({a.text(3)}), then {second} ({b.text(3)}): {noise_words(a, b, 3)}"


def answer_quality(results: list[Result]) -> tuple[list[str], list[str]]:
    groups = {k: v for k, v in by_config(results, "exp2").items() if not k.endswith("epoch")}
    ranked, lead = leaders(groups, "exp2")
    if len(ranked) < 2:
        return [lead], []
    lines = [f"At equal compute, {lead}."]
    surprises = []
    for pool in sorted({r.run.sets["mix.pool"] for g in groups.values() for r in g}):
        curated, noisy = groups.get(f"{pool}-top_quality"), groups.get(f"{pool}-random")
        if curated and noisy:
            c, n = summarise(curated, PRIMARY.key), summarise(noisy, PRIMARY.key)
            lines.append(f"{pool}: top_quality {c.text(3)} against random {n.text(3)} ({noise_words(c, n, 3)}).")
            if compare(c, n)[2] and c.mean > n.mean:
                surprises.append(f"At {pool}, random sampling beat top_quality on held-out bpb ({n.text(3)} against {c.text(3)}).")
    small, large = summarise(groups.get("10K-top_quality", []), PRIMARY.key), summarise(groups.get("1M-random", []), PRIMARY.key)
    if small and large:
        verdict = "beats" if compare(small, large)[2] and small.mean < large.mean else "does not beat"
        lines.append(f"The curated 10K {verdict} the noisy 1M at equal compute ({small.text(3)} against {large.text(3)}).")
        if verdict == "does not beat":
            surprises.append(f"The curated 10K did not beat the noisy 1M pool at equal compute ({small.text(3)} against {large.text(3)} bpb).")
    for strategy in ("top_quality", "random"):
        epoch, budget = by_config(results, "exp2").get(f"10K-{strategy}-epoch"), groups.get(f"10K-{strategy}")
        if epoch and budget:
            e, f = summarise(epoch, PRIMARY.key), summarise(budget, PRIMARY.key)
            tokens = summarise(epoch, TRAINING_TOKENS.key)
            lines.append(f"One epoch of 10K {strategy} ({tokens.mean:,.0f} tokens) reaches {e.text(3)} bpb against {f.text(3)} "
                         f"at the fixed budget ({noise_words(e, f, 3)}).")
    return lines, surprises


def answer_mix(results: list[Result]) -> tuple[list[str], list[str]]:
    groups = by_config(results, "exp3")
    ranked, lead = leaders(groups, "exp3")
    if len(ranked) < 2:
        return [lead], []
    first = ranked[0][0]
    lines = [f"Among the mixes, {lead}; the highest is {ranked[-1][0]} ({ranked[-1][1].text(3)})."]
    surprises = []
    for metric in (REFERENCES[-1], CHEAP[6]):
        top = best(groups, metric)
        if top:
            lines.append(f"By {metric.label} the best is {top[0][0]} ({top[0][1].text(3)}).")
            if top[0][0] != first:
                surprises.append(f"The best mix by held-out bpb ({first}) is not the best by {metric.label} ({top[0][0]}).")
    return lines, surprises


def answer_synthetic(results: list[Result]) -> list[str]:
    pure = by_config(results, "exp1").get("instruction_only")
    if not pure:
        return ["exp1 has not finished."]
    reference = by_config(results, "exp2").get("10K-top_quality")
    tasks = summarise(pure, "tasks_accuracy")
    verdict = "No, not at this profile's scale" if tasks.mean == 0 else "Partly"
    words = [f"{verdict}: trained on instruction data alone (the curated 10K pool), the model reaches task accuracy "
             f"{tasks.text(3)}, held-out {summarise(pure, PRIMARY.key).text(3)} bpb, benchmark mean "
             f"{summarise(pure, 'benchmark_mean').text(3)} (chance {summarise(pure, 'benchmark_chance').mean:.3f}) and coherence "
             f"{summarise(pure, 'judge_coherence_score').text(3)}"]
    if reference:
        p, r = summarise(pure, PRIMARY.key), summarise(reference, PRIMARY.key)
        words.append(f"; the plan mix from the same pool: {r.text(3)} bpb ({noise_words(p, r, 3)})")
    return ["".join(words) + "."]


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
    lines.append(f"Within this project's own {len(results)} models, {len(cleared)} cheap metric/reference pairs have Spearman rho above {RHO_BAR}"
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
    coherence = summarise(empty, CHEAP[6].key)
    if not empty or coherence is None or coherence.mean < 0.5:
        return []
    return [f"{len(empty)} of {len(results)} models reply with no words at all (reply_empty_rate 1; they emit only "
            f"whitespace or special tokens), yet the coherence judge scores them {coherence.text(3)}: an empty reply has "
            "none of the flaws it was trained to catch."]


def markdown(definition, results: list[Result], missing: list[str], table_rho: dict, profile: str, plots: Path) -> str:
    q2, s2 = answer_quality(results)
    q3, s3 = answer_mix(results)
    q4, s4 = answer_correlation(table_rho, results)
    out = [f"# Results of the research experiments ({profile} profile)", "",
           f"Generated by `python -m research.report --profile {profile}` from {len(results)} finished runs "
           f"(`dvc exp show -A`); every number below is in the tables that follow. "
           "Means ± standard deviations are over seeds; a difference is *beyond noise* when it exceeds twice its standard error.", "",
           "## Answers", "",
           f"1. **{definition.experiments['exp1'].question}** " + " ".join(answer_synthetic(results)) if "exp1" in definition.experiments else "",
           f"2. **{definition.experiments['exp2'].question}** " + " ".join(q2) if "exp2" in definition.experiments else "",
           f"3. **{definition.experiments['exp3'].question}** " + " ".join(q3) if "exp3" in definition.experiments else "",
           "4. **How well do zero-cost metrics agree with a reference?** " + " ".join(q4), "",
           "## Surprises", ""]
    out += [f"- {s}" for s in (s2 + s3 + s4 + judged_empty_replies(results))] or ["- None: every comparison went the way the research plan expected."]
    for name, spec in definition.experiments.items():
        out += ["", f"## {name}: {spec.question}", "", *table(by_config(results, name))]
    out += ["", "Plots: " + ", ".join(f"[{p}]({Path('..') / plots / p})" for p in ("quality_vs_quantity.png", "mix.png", "correlation.png", "loss_curves.png")),
            "", "## exp4: Spearman rho of each cheap metric against each reference (95% bootstrap interval)", "",
            "| cheap metric | " + " | ".join(r.label for r in REFERENCES) + " |", "|---|" + "---:|" * len(REFERENCES)]
    for cheap in CHEAP:
        cells = [(f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" if (v := table_rho.get((cheap.key, r.key))) else "n/a") for r in REFERENCES]
        out.append(f"| {cheap.label}{' (negated)' if not cheap.higher_is_better else ''} | " + " | ".join(cells) + " |")
    out += ["", "n/a: the cheap metric or the reference is the same for every model (no ranking). Cheap metrics where lower is better "
            "are negated, so + means agreement.",
            "", "## Runs", "", f"{len(results)} finished" + (f"; missing or failed: {', '.join(missing)}" if missing else "") + "."]
    return "\n".join(line for line in out if line is not None) + "\n"


def write_runs_csv(results: list[Result], path: Path) -> None:
    """Add or replace the results' rows; rows of runs that finished elsewhere (another machine) stay."""
    keys = [m.key for m in (TRAINING_TOKENS, *CHEAP, *REFERENCES)]
    rows = [{"name": r.run.name, "experiment": r.run.experiment, "config": r.run.config, "seed": str(r.run.seed), "rev": r.rev[:7],
             **{k: f"{r.metrics[k]:.6g}" if k in r.metrics else "" for k in keys}} for r in results]
    save_rows(path, ["name", "experiment", "config", "seed", "rev", *keys], rows)


def record_runs(profile: str, path: Path) -> list[Result]:
    """Only the rows of runs.csv, of the runs that finished on HEAD (research.experiments run calls it after each run)."""
    results, _ = collect(expand(load_definition(profile)), all_commits=False)
    write_runs_csv(results, path)
    return results


def report(profile: str, out: Path, plots: Path, sizes: dict[str, int]) -> tuple[list[Result], list[str]]:
    definition = load_definition(profile)
    results, missing = collect(expand(definition))
    if not results:
        raise StageError(f"no finished experiment of the {profile} profile: run `make experiments` (or `make exp1` ...) first")
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.mkdir(parents=True, exist_ok=True)
    table_rho = correlations(results)
    plot_quality_vs_quantity(results, sizes, plots / "quality_vs_quantity.png")
    plot_mix(results, plots / "mix.png")
    plot_correlation(table_rho, plots / "correlation.png")
    plot_loss_curves(results, list(definition.experiments), plots / "loss_curves.png")
    out.write_text(markdown(definition, results, missing, table_rho, profile, plots))
    write_runs_csv(results, out.with_name("runs.csv"))
    return results, missing


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Plots and a results table from the research experiments")
    parser.add_argument("--profile", default="cpu", help="experiments/<profile>.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, help="default: reports/results.md, reports/<profile>/results.md for other profiles")
    parser.add_argument("--plots", type=Path, default=Path("plots/report"))
    parser.add_argument("--runs-only", action="store_true", help="only add the rows of the runs finished on HEAD to runs.csv")
    args = parser.parse_args(argv)
    args.out = args.out or report_dir(args.profile) / "results.md"
    if args.runs_only:
        results = record_runs(args.profile, args.out.with_name("runs.csv"))
        print(f"report: {len(results)} runs finished on HEAD -> {args.out.with_name('runs.csv')}")
        return
    results, missing = report(args.profile, args.out, args.plots, load_params(args.params).sample.sizes)
    print(f"report: {len(results)} runs ({len(missing)} missing or failed) -> {args.out}, {args.out.with_name('runs.csv')}, {args.plots}/*.png")


if __name__ == "__main__":
    run_stage(main)
