"""The research report's statistics (docs/experiments.md): 95 % t-intervals over seeds, Welch's t-test between
configurations with Holm's correction over every pair of an experiment, and the baselines a run must beat to
count as a signal at all."""

import itertools
import math
import re
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # a difference is significant when its Holm-adjusted p-value is below this
# Below this many seeds an unresolved leading difference may just be short of data: at 3 seeds the t-interval's
# half-width is 4.3 standard errors (t at 2 degrees of freedom), at 5 seeds 2.8.
SEEDS_NEEDED = 5
# A model whose held-out loss on a category is within this of the bigram model fitted on its own training tokens
# (nats/token) has learned little beyond word-pair statistics; nothing it does is evidence about its data.
BIGRAM_MARGIN = 0.05
# Above chance by more than this counts as signal where a benchmark's item count is unknown (old runs): two
# binomial standard errors at 0.5 and 2,500 items; with the count, two standard errors of the count itself.
CHANCE_MARGIN = 0.02
CATEGORY_LOSS = re.compile(r"heldout_(?P<source>.+)_(?P<category>instruction|knowledge|web)_loss")
TASK_FAMILY = re.compile(r"tasks_(?P<family>.+)_accuracy")
SIGNAL, NO_SIGNAL, UNKNOWN = "signal", "no signal", "unknown"


# --- intervals and tests over seeds -------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its 95 % t-interval, mean ± t(0.975, n-1)·s/√n; one seed has no interval (nan)."""
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """For error bars: 0 where one seed gives no interval."""
        return 0.0 if self.n < 2 else (self.high - self.low) / 2

    def text(self, digits: int = 3) -> str:
        number = lambda x: f"{x:,.{digits}f}"
        return number(self.mean) if self.n < 2 else f"{number(self.mean)} [{number(self.low)}, {number(self.high)}]"


def t_interval(values) -> Interval:
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan, len(values))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half, len(values))


@dataclass(frozen=True)
class Comparison:
    """a − b over seeds: the difference of means, its 95 % Welch interval, Welch's p-value and, once the
    comparison's family is known, the p-value after Holm's correction."""
    difference: float
    low: float
    high: float
    p: float
    seeds: int  # the fewer of the two sides' seeds
    adjusted: float = math.nan

    @property
    def significant(self) -> bool:
        return self.adjusted < ALPHA

    @property
    def crosses_zero(self) -> bool:
        return not (self.low > 0 or self.high < 0)  # true, too, where one seed gives no interval (nan)

    def reversed(self) -> "Comparison":
        return replace(self, difference=-self.difference, low=-self.high, high=-self.low)

    def text(self, digits: int = 3) -> str:
        interval = f" [{self.low:+.{digits}f}, {self.high:+.{digits}f}]" if not math.isnan(self.low) else ""
        verdict = "significant" if self.significant else "not significant"
        return f"difference {self.difference:+.{digits}f}{interval}, Holm p = {self.adjusted:.3g}: {verdict}"


def welch(a, b) -> Comparison:
    """Welch's t-test of a against b (no assumption of equal variances), unadjusted."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference, seeds = float(a.mean() - b.mean()), min(len(a), len(b))
    if seeds < 2:  # one seed: no noise estimate, so never significant
        return Comparison(difference, math.nan, math.nan, 1.0, seeds)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread on either side (every seed scores 0): equal or exactly different
        return Comparison(difference, difference, difference, 1.0 if difference == 0 else 0.0, seeds)
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(CONFIDENCE)
    return Comparison(difference, float(interval.low), float(interval.high), float(test.pvalue), seeds)


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni: the i-th smallest of m p-values (i from 0) times m − i, kept from falling below the
    one before and capped at 1, in the input order; it bounds the chance of any false positive in the family."""
    adjusted, running = [0.0] * len(p_values), 0.0
    for i, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (len(p_values) - i) * p_values[index]))
        adjusted[index] = running
    return adjusted


def pairwise(values: dict[str, list[float]]) -> dict[tuple[str, str], Comparison]:
    """Every pair of configurations (config -> its per-seed values), Welch-tested, Holm-adjusted as one family;
    keyed both ways round, (a, b) holding a − b."""
    pairs = list(itertools.combinations(values, 2))
    tests = [welch(values[a], values[b]) for a, b in pairs]
    table = {}
    for (a, b), test, adjusted in zip(pairs, tests, holm([t.p for t in tests])):
        table[a, b] = replace(test, adjusted=adjusted)
        table[b, a] = table[a, b].reversed()
    return table


@dataclass(frozen=True)
class Ranking:
    order: list[str]               # best mean first
    intervals: dict[str, Interval]
    tied: list[str]                # the best and every configuration not significantly different from it
    lead: Comparison | None        # the best against the runner-up
    needs_seeds: bool              # the lead's interval crosses 0 with fewer than SEEDS_NEEDED seeds

    @property
    def leader(self) -> str | None:
        """Named only when the best differs significantly from every other configuration."""
        return self.order[0] if len(self.tied) == 1 else None


def rank(values: dict[str, list[float]], higher_is_better: bool,
         comparisons: dict[tuple[str, str], Comparison] | None = None) -> Ranking:
    """Configurations ranked by mean; ``comparisons`` from ``pairwise`` over a larger family (the whole
    experiment), or over these configurations when None."""
    comparisons = comparisons or pairwise(values)
    intervals = {config: t_interval(v) for config, v in values.items()}
    order = sorted(values, key=lambda config: intervals[config].mean, reverse=higher_is_better)
    best = order[0]
    tied = [best] + [config for config in order[1:] if not comparisons[best, config].significant]
    lead = comparisons[best, order[1]] if len(order) > 1 else None
    needs_seeds = lead is not None and lead.crosses_zero and lead.seeds < SEEDS_NEEDED
    return Ranking(order, intervals, tied, lead, needs_seeds)


# --- baselines: does a run carry any signal? ----------------------------------------------------
@dataclass(frozen=True)
class Signal:
    label: str                 # SIGNAL, NO_SIGNAL or UNKNOWN
    reasons: tuple[str, ...]   # why no signal, or which baselines are missing


def categories_at_bigram(metrics: dict[str, float]) -> list[str] | None:
    """The held-out categories (``<source>_<category>``) whose loss is not clearly below their bigram loss;
    None when no category has a finite bigram baseline (runs from before the eval fitted one, or whose bigram
    was infinite: a mix repeated a whole number of times, before ngram.py's discount handled it)."""
    pairs = {key.removeprefix("heldout_").removesuffix("_loss"): (value, metrics[bigram]) for key, value in metrics.items()
             if CATEGORY_LOSS.fullmatch(key) and (bigram := key.removesuffix("_loss") + "_bigram_loss") in metrics
             and math.isfinite(metrics[bigram])}
    if not pairs:
        return None
    return [category for category, (loss, bigram) in sorted(pairs.items()) if loss >= bigram - BIGRAM_MARGIN]


def accuracies(metrics: dict[str, float]) -> dict[str, tuple[float, float, float | None]]:
    """name -> (accuracy, chance, item count or None) of every task family and every benchmark with a chance
    level; a task family's answers are free-form, so its chance is 0 unless the eval states one."""
    found = {}
    for key, value in metrics.items():
        if family := TASK_FAMILY.fullmatch(key):
            name = f"tasks_{family['family']}"
            found[name] = (value, metrics.get(f"{name}_chance", 0.0), metrics.get(f"{name}_items"))
        elif key.endswith("_acc") and (name := key.removesuffix("_acc")) + "_chance" in metrics:
            found[name] = (value, metrics[f"{name}_chance"], metrics.get(f"{name}_items"))
    return found


def at_chance(accuracy: float, chance: float, items: float | None) -> bool:
    """Not clearly above chance: within two binomial standard errors (at the measured accuracy, so that a
    chance of 0 still has a margin once anything is right) of it, or within CHANCE_MARGIN without an item count."""
    margin = 2 * math.sqrt(accuracy * (1 - accuracy) / items) if items else CHANCE_MARGIN
    return accuracy <= chance + margin


def signal(metrics: dict[str, float]) -> Signal:
    """No signal when the loss on any held-out category is not clearly below its bigram baseline, or when every
    task family and benchmark is at chance; unknown when neither holds but a baseline is missing."""
    flat = categories_at_bigram(metrics)
    scores = accuracies(metrics)
    reasons = []
    if flat:
        reasons.append(f"held-out loss not {BIGRAM_MARGIN} nats below the bigram baseline on {', '.join(flat)}")
    if scores and all(at_chance(*score) for score in scores.values()):
        reasons.append("every task family and benchmark at chance")
    if reasons:
        return Signal(NO_SIGNAL, tuple(reasons))
    missing = [what for what, known in (("no n-gram baselines", flat is not None), ("no accuracies", bool(scores))) if not known]
    return Signal(UNKNOWN, tuple(missing)) if missing else Signal(SIGNAL, ())


def threshold_verdict(interval: Interval, bar: float, below: bool) -> str:
    """An expectation 'below (or above) bar' against a 95 % interval: met or not met when the whole interval
    is on one side, tied when it includes the bar (or one seed gives no interval)."""
    if interval.n >= 2 and (interval.high < bar if below else interval.low > bar):
        return "met"
    if interval.n >= 2 and (interval.low > bar if below else interval.high < bar):
        return "not met"
    return "tied"
