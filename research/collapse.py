"""make collapse: ``python -m research.collapse [--params FILE] [--commit]``.

Model collapse (Shumailov et al., 2023, "The Curse of Recursion"), replicated
offline on a pretrained model. The reference: OPT-125m fine-tuned on
wikitext-2; each generation fine-tunes the pretrained model afresh on text
that the previous generation's model wrote, given 64-token blocks of the
original text as prompts; perplexity on the original test set rises
generation after generation, and keeping 10 % of the original data limits it.

Here every generation fine-tunes ``collapse.teacher`` (SmolLM2-135M-Instruct)
with the pipeline's own tokenize, train and eval stages, each run in its own
directory ``data/collapse/<run>/``. Generation 0 trains on ``collapse.blocks``
blocks of human text (``collapse.text``, less ``heldout_documents`` documents
held out); generation k of arm ``pure`` on the continuations that generation
k-1's model wrote to the same human prompts, arm ``mixed`` on the same with
``real_fraction`` of the human blocks in place of generated ones. Every record
is one block of ``block_tokens`` tokens (a continuation's end token is held
back until then), so generations and arms train on equal tokens and equal
lengths. Each seed repeats the whole chain.

A finished run's results are appended to ``reports/collapse_runs.jsonl`` (and
committed with ``--commit``), and a run found there is skipped, so a new
machine continues the chains; it reruns a finished run only when a child needs
the text it wrote. Writes ``metrics/collapse.json``, ``plots/collapse.png`` and
``reports/collapse.md`` (docs/experiments.md, "Model collapse").
"""

import copy
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

from synthtrain.cli import run_stage, stage_arguments  # noqa: E402
from synthtrain.embeddings import minilm_encoder  # noqa: E402
from synthtrain.evaluation.textmetrics import distinct_n, self_bleu  # noqa: E402
from synthtrain.experiments import commit_rows  # noqa: E402
from synthtrain.generation import Generator, load_model, use_faster_precision  # noqa: E402
from synthtrain.params import Collapse, StageError, load_params, model_path, parse_params  # noqa: E402
from synthtrain.records import SCHEMA, make_record, write_metrics  # noqa: E402
from synthtrain.statistics import t_interval  # noqa: E402

log = logging.getLogger("collapse")
REPO = Path(__file__).resolve().parent.parent
WORK = Path("data/collapse")
RESULTS = Path("reports/collapse_runs.jsonl")
METRICS = Path("metrics/collapse.json")
PLOT = Path("plots/collapse.png")
REPORT = Path("reports/collapse.md")
SHARED = ("data/raw/builtin_eval.parquet",)  # the pipeline's, which the eval stage checks
GENERATED = Path("generated.parquet")  # in a run's directory: what its model wrote, the next generation's data
ARMS = ("pure", "mixed")
ZERO_SHOT = "zero-shot"  # the teacher itself, not fine-tuned: a row of RESULTS that is not a generation


@dataclass(frozen=True)
class CollapseRun:
    name: str
    seed: int
    generation: int
    arm: str  # "original" for generation 0
    parent: str | None  # the run whose model wrote this one's data


def plan(config: Collapse) -> list[CollapseRun]:
    """Per seed: generation 0, then each arm's chain, a parent always before its child."""
    runs = []
    for seed in config.seeds:
        runs.append(CollapseRun(f"s{seed}-gen0", seed, 0, "original", None))
        for arm in ARMS:
            for k in range(1, config.generations + 1):
                runs.append(CollapseRun(f"s{seed}-gen{k}-{arm}", seed, k, arm, f"s{seed}-gen0" if k == 1 else f"s{seed}-gen{k - 1}-{arm}"))
    return runs


# --- the human text: documents, held-out documents, blocks ---------------------------------------
@dataclass
class HumanText:
    blocks: list[list[int]]   # every block_tokens-token block of the training documents, in order
    heldout: list[str]        # the held-out documents

    def training_blocks(self, config: Collapse, seed: int) -> list[list[int]]:
        """The seed's ``blocks`` training blocks (also the prompts of every generation of its chains)."""
        if len(self.blocks) < config.blocks:
            raise StageError(f"{config.text} has {len(self.blocks)} blocks of {config.block_tokens} tokens outside the held-out "
                             f"documents, fewer than collapse.blocks = {config.blocks}")
        order = np.random.default_rng(seed).permutation(len(self.blocks))[: config.blocks]
        return [self.blocks[i] for i in sorted(order)]


def human_text(config: Collapse, tokenizer) -> HumanText:
    path = Path(config.text)
    if not path.is_file():
        raise StageError(f"collapse.text: {path} is missing")
    documents = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(documents) <= config.heldout_documents:
        raise StageError(f"{path} has {len(documents)} documents; collapse.heldout_documents = {config.heldout_documents} leaves none to train on")
    held = set(np.random.default_rng(0).permutation(len(documents))[: config.heldout_documents].tolist())  # the same for every seed
    blocks = []
    for i, document in enumerate(documents):
        if i not in held:
            ids = tokenizer(document, add_special_tokens=False)["input_ids"]
            blocks += [ids[start : start + config.block_tokens] for start in range(0, len(ids) - config.block_tokens + 1, config.block_tokens)]
    return HumanText(blocks, [documents[i] for i in sorted(held)])


def text_records(texts: list[str]) -> pa.Table:
    return pa.Table.from_pylist([make_record("collapse", "knowledge", text=text) for text in texts], SCHEMA)


# --- a run ------------------------------------------------------------------------------------------
def run_params(raw: dict, config: Collapse, run: CollapseRun) -> dict:
    """The pipeline's params with collapse's settings on top: every generation fine-tunes the teacher afresh."""
    params = copy.deepcopy(raw)
    for section in ("train", "tokenize", "eval"):
        params.setdefault(section, {}).update(getattr(config, section))
    teacher = model_path(config.teacher)
    if Path(teacher).exists():  # a folder: made absolute, since each run's stages start in the run's own directory
        teacher = str(Path(teacher).resolve())
    params["train"].update(init=teacher, seed=run.seed)
    params.setdefault("tokenizer", {})["pretrained"] = teacher
    params.pop("collapse", None)
    parse_params(params, f"collapse run {run.name}")  # collapse.train/tokenize/eval keys are checked here
    return params


def training_texts(run: CollapseRun, config: Collapse, human: list[str]) -> list[str]:
    """gen0: the human blocks; pure: the parent's continuations; mixed: real_fraction human blocks, the rest generated."""
    if run.parent is None:
        return human
    generated = pq.read_table(WORK / run.parent / GENERATED).column("text").to_pylist()
    real = round(config.blocks * config.real_fraction) if run.arm == "mixed" else 0
    rng = np.random.default_rng(run.seed * 1000 + run.generation)
    chosen_real = rng.choice(len(human), real, replace=False) if real else []
    texts = [human[i] for i in chosen_real] + generated[: config.blocks - real]
    return [texts[i] for i in rng.permutation(len(texts))]


def stage(workdir: Path, module: str, *args: str) -> None:
    """``python -m <module>`` in the run's directory, its log kept there."""
    log_path = workdir / "logs" / f"{module.split('.')[-1]}.log"
    log_path.parent.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with open(log_path, "w") as out:
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:])
        raise StageError(f"{workdir.name}: {module} failed (log: {log_path}):\n{tail}")


def prepare(run: CollapseRun, params: dict, texts: list[str], heldout: list[str]) -> Path:
    """The run's working directory with its params, training text and held-out text; emptied first if any changed."""
    workdir = WORK / run.name
    fingerprint = hashlib.blake2b(json.dumps([params, texts, heldout], sort_keys=True).encode(), digest_size=8).hexdigest()
    marker = workdir / "settings.fingerprint"
    if workdir.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        log.info("%s: settings or data changed, starting it over", run.name)
        shutil.rmtree(workdir)
    if marker.is_file():
        return workdir
    workdir.mkdir(parents=True, exist_ok=True)
    for shared in SHARED:
        if not Path(shared).exists():
            raise StageError(f"{shared} is missing: run `dvc repro` first (make collapse does)")
        link = workdir / shared
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(shared).resolve())
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for path, table in ((workdir / "data/mix/train.parquet", text_records(texts)), (workdir / "data/heldout/human.parquet", text_records(heldout))):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    pool = workdir / "data/dedup/train.parquet"  # the train_tokenizer stage reports the teacher tokenizer's compression on it
    pool.parent.mkdir(parents=True, exist_ok=True)
    pool.symlink_to(Path("../mix/train.parquet"))
    marker.write_text(fingerprint)
    return workdir


def continuations(workdir: Path, prompts: list[list[int]], config: Collapse, seed: int) -> list[str]:
    """What the run's model writes after each prompt block: one whole block each (as Shumailov et al.: 64 tokens), its
    end token held back until then, so that every generation's records are as long as the human ones."""
    model, tokenizer = load_model(workdir / "models/current", fix="the run's train stage did not finish")
    use_faster_precision(model, config.sampling.batch_size)
    generator = Generator(model, tokenizer, config.sampling, seed)
    replies = generator.complete([tokenizer.decode(ids) for ids in prompts], desc=f"{workdir.name}: writing", min_new_tokens=config.block_tokens)
    return [reply.text for reply in replies]


def execute(run: CollapseRun, params: dict, config: Collapse, human: list[str], prompts: list[list[int]], heldout: list[str],
            generate: bool) -> Path:
    """Train and evaluate the run (unless done), then, if ``generate``, write its continuations (unless written)."""
    workdir = prepare(run, params, training_texts(run, config, human), heldout)
    if not (workdir / "metrics/eval.json").is_file():
        for module in ("stages.train_tokenizer", "stages.tokenize", "stages.train", "stages.eval"):
            log.info("%s: %s", run.name, module)
            stage(workdir, module)
    if generate and not (workdir / GENERATED).is_file():
        pq.write_table(pa.table({"text": continuations(workdir, prompts, config, run.seed)}), workdir / GENERATED)
    return workdir


def zero_shot(config: Collapse, raw: dict, human: list[str], heldout: list[str], commit: bool) -> dict:
    """The teacher before any fine-tuning, scored by the same eval stage on the same held-out text (the reference's
    zero-shot baseline, which fine-tuning on the human text must beat); recorded like a run."""
    done = recorded()
    if ZERO_SHOT in done:
        return done[ZERO_SHOT]
    run = CollapseRun(ZERO_SHOT, config.seeds[0], 0, "original", None)
    params = run_params(raw, config, run)
    workdir = prepare(run, params, human, heldout)
    for module in ("stages.train_tokenizer", "stages.tokenize"):  # the eval stage's n-gram baselines read the tokenized text
        stage(workdir, module)
    log.info("%s: stages.eval of the teacher itself", ZERO_SHOT)
    stage(workdir, "stages.eval", "--model", params["train"]["init"])
    evaluation = json.loads((workdir / "metrics/eval.json").read_text())
    result = {"name": ZERO_SHOT, "heldout_ppl": evaluation["heldout_human_ppl"], "heldout_bpb": evaluation["heldout_human_bpb"]}
    record(result, commit)
    return result


# --- what a generation's data looks like ---------------------------------------------------------------
def rare_units(token_lists: list[list[int]], rare_count: int) -> tuple[set, set]:
    """Tokens and bigrams seen at most ``rare_count`` times in ``token_lists`` (every block of the human training
    documents): the tails of the human text."""
    tokens, bigrams = Counter(), Counter()
    for ids in token_lists:
        tokens.update(ids)
        bigrams.update(zip(ids, ids[1:]))
    return {t for t, n in tokens.items() if n <= rare_count}, {b for b, n in bigrams.items() if n <= rare_count}


def data_metrics(texts: list[str], tokenizer, tails: tuple[set, set], config: Collapse) -> dict:
    """How varied a generation's training text is: distinct n-grams, self-BLEU, MiniLM spread, and the share of
    the human text's rare tokens and bigrams it still has (Shumailov et al.: the tails go first)."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    seen_tokens = {t for row in ids for t in row}
    seen_bigrams = {b for row in ids for b in zip(row, row[1:])}
    sample = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[: config.spread_records]]
    vectors = minilm_encoder(sample)
    pairs = len(sample) * (len(sample) - 1)
    return {"records": len(texts), "tokens_per_record": round(float(np.mean([len(row) for row in ids])), 1),
            "distinct_1": round(distinct_n(texts, 1), 4), "distinct_2": round(distinct_n(texts, 2), 4),
            "self_bleu": round(self_bleu(texts), 2),
            "spread": round(float((pairs - ((vectors @ vectors.T).sum() - len(sample))) / pairs), 4),
            "rare_tokens_kept": round(len(tails[0] & seen_tokens) / max(len(tails[0]), 1), 4),
            "rare_bigrams_kept": round(len(tails[1] & seen_bigrams) / max(len(tails[1]), 1), 4)}  # fmt: skip


def run_result(run: CollapseRun, workdir: Path, texts: list[str], tokenizer, tails, config: Collapse) -> dict:
    evaluation = json.loads((workdir / "metrics/eval.json").read_text())
    train = json.loads((workdir / "metrics/train/metrics.json").read_text())
    return {"name": run.name, "seed": run.seed, "generation": run.generation, "arm": run.arm, "trained_on": run.parent or "human text",
            "heldout_ppl": evaluation["heldout_human_ppl"], "heldout_bpb": evaluation["heldout_human_bpb"],
            "train_seconds": train["wall_time_s"], "training_data": data_metrics(texts, tokenizer, tails, config)}


def recorded(path: Path = RESULTS) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {row["name"]: row for row in map(json.loads, path.read_text().splitlines()) if row}


def record(result: dict, commit: bool) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(result, sort_keys=True) + "\n")
    if commit:
        commit_rows([RESULTS], f"collapse {result['name']}")


# --- the report ---------------------------------------------------------------------------------------
def series(results: dict[str, dict], arm: str, key) -> dict[int, list[float]]:
    """Per generation, the value of every seed, generation 0 included in each arm."""
    values: dict[int, list[float]] = {}
    for row in results.values():
        if row["arm"] in (arm, "original"):
            values.setdefault(row["generation"], []).append(key(row))
    return dict(sorted(values.items()))


PANELS = (  # (title, value of a run, its human-text value or None)
    ("perplexity on held-out human text", lambda r: r["heldout_ppl"], None),
    ("rare human tokens kept (share)", lambda r: r["training_data"]["rare_tokens_kept"], "rare_tokens_kept"),
    ("rare human bigrams kept (share)", lambda r: r["training_data"]["rare_bigrams_kept"], "rare_bigrams_kept"),
    ("distinct-2 of the training text", lambda r: r["training_data"]["distinct_2"], "distinct_2"),
    ("self-BLEU of the training text", lambda r: r["training_data"]["self_bleu"], "self_bleu"),
    ("MiniLM spread of the training text", lambda r: r["training_data"]["spread"], "spread"),
)


def plot(results: dict[str, dict], original: dict, baseline: dict, config: Collapse, path: Path) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, key, human) in zip(axes.flat, PANELS):
        for arm, style in zip(ARMS, ("o-", "s--")):
            points = {g: t_interval(v) for g, v in series(results, arm, key).items()}
            label = "pure (generated only)" if arm == "pure" else f"mixed ({config.real_fraction:.0%} human text)"
            ax.errorbar(list(points), [p.mean for p in points.values()], yerr=[p.half_width for p in points.values()], fmt=style,
                        capsize=3, label=label)
        if human is not None:
            ax.axhline(original[human], color="grey", linestyle=":", label="the human training text")
        else:
            ax.axhline(baseline["heldout_ppl"], color="grey", linestyle=":", label="the teacher before fine-tuning")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generation")
        ax.set_xticks(range(config.generations + 1))
    axes.flat[0].legend(fontsize=8)
    axes.flat[1].legend(fontsize=8)
    figure.suptitle(f"Model collapse on {config.teacher}: {config.blocks} blocks of {config.block_tokens} tokens per generation; "
                    f"mean and 95 % interval over seeds {config.seeds}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def listing(points: dict[int, list[float]]) -> str:
    return " → ".join(t_interval(values).text(4) for values in points.values())


def direction(points: dict[int, list[float]], start: int) -> str:
    """How the mean over seeds moves from generation ``start`` to the last: every step up, every step down, or neither."""
    steps = np.diff([float(np.mean(points[g])) for g in sorted(points) if g >= start])
    if len(steps) == 0:
        return "has one generation only"
    return "rises every generation" if np.all(steps > 0) else "falls every generation" if np.all(steps < 0) else "moves both ways"


def comparison(ppl: dict, data: dict, baseline: dict, config: Collapse) -> list[str]:
    """The reference's findings one by one against this run's (means over seeds)."""
    last = max(ppl["pure"])
    mean = {arm: {g: float(np.mean(v)) for g, v in ppl[arm].items()} for arm in ARMS}
    gen0 = mean["pure"][0]
    pure_rise, mixed_rise = mean["pure"][last] / gen0, mean["mixed"][last] / gen0
    kept = {arm: {g: float(np.mean(v)) for g, v in data["rare_tokens_kept"][arm].items()} for arm in ARMS}
    findings = [
        ("Fine-tuning on the human text learns it: perplexity falls below the zero-shot model's",
         f"zero-shot {baseline['heldout_ppl']:.2f} → generation 0 {gen0:.2f}", gen0 < baseline["heldout_ppl"]),
        ("With no human text kept, perplexity on the human test text rises generation after generation",
         f"pure arm {direction(ppl['pure'], 0)} from generation 0; generation {last} is {pure_rise:.2f}× generation 0", pure_rise > 1),
        (f"Keeping {config.real_fraction:.0%} of the human text limits the rise",
         f"mixed arm at generation {last} is {mixed_rise:.2f}× generation 0 (pure {pure_rise:.2f}×)", mixed_rise < pure_rise),
        ("The generated text loses the tails of the human distribution",
         f"rare human tokens kept, pure arm: {kept['pure'][1]:.1%} at generation 1 → {kept['pure'][last]:.1%} at generation {last} "
         f"(the human blocks: {kept['pure'][0]:.1%})", kept["pure"][last] < kept["pure"][0]),
        ("The generated text narrows (more repetition)",
         f"of the generated text (generation 1 on), pure arm: self-BLEU {direction(data['self_bleu']['pure'], 1)}, distinct-2 "
         f"{direction(data['distinct_2']['pure'], 1)}",
         None),
    ]
    lines = ["| the reference (Shumailov et al., 2023) | here, means over seeds | agrees |", "|---|---|---|"]
    for claim, ours, agrees in findings:
        lines.append(f"| {claim} | {ours} | {'yes' if agrees else 'no' if agrees is not None else 'see the per-run table'} |")
    return lines


def verdict(pure: dict[int, list[float]], mixed: dict[int, list[float]]) -> str:
    """The reference's two findings against ours: perplexity rises with each pure generation (every seed), and the
    mixed arm ends below the pure arm (every seed); 'replicated' when both hold, 'partly' when one does."""
    last = max(pure)
    rises = all(np.all(np.diff([pure[g][s] for g in sorted(pure)]) > 0) for s in range(len(pure[0])))
    limited = all(m < p for m, p in zip(mixed[last], pure[last]))
    findings = [f"perplexity {'rises' if rises else 'does not rise'} with every generation of the pure arm in every seed",
                f"the mixed arm {'ends below' if limited else 'does not end below'} the pure arm at generation {last} in every seed"]
    word = "replicated" if rises and limited else "partly replicated" if rises or limited else "not replicated"
    return f"**{word.capitalize()}**: {findings[0]}, and {findings[1]}."


def report(results: dict[str, dict], original: dict, baseline: dict, config: Collapse, params: dict, path: Path) -> None:
    ppl = {arm: series(results, arm, lambda r: r["heldout_ppl"]) for arm in ARMS}
    data = {key: {arm: series(results, arm, lambda r, k=key: r["training_data"][k]) for arm in ARMS}
            for key in ("rare_tokens_kept", "rare_bigrams_kept", "distinct_2", "self_bleu", "spread")}
    train = {**params.get("train", {}), **config.train}
    lines = [
        "# Model collapse on a pretrained model",
        "",
        "Written by `make collapse` (`python -m research.collapse`; how it works: docs/experiments.md, \"Model collapse\"). "
        f"Per run: `{RESULTS}`; summary: `metrics/collapse.json`; plot: `plots/collapse.png`.",
        "",
        f"Setup: every generation fine-tunes `{config.teacher}` afresh for {train.get('tokens'):,} tokens (lr {train.get('lr')}) on "
        f"{config.blocks} blocks of {config.block_tokens} tokens. Generation 0: blocks of human text (`{config.text}`, "
        f"{config.heldout_documents} documents held out). Generation k: the blocks that generation k-1's model wrote after the "
        f"same human prompts (sampling at temperature {config.sampling.temperature}, top-p {config.sampling.top_p}), in the mixed "
        f"arm with {config.real_fraction:.0%} human blocks in their place. Seeds {config.seeds}: mean and 95 % t-interval over them.",
        "",
        "## Against the reference",
        "",
        "Shumailov et al. (2023) fine-tune OPT-125m on wikitext-2, each generation on the previous one's generated text: "
        "perplexity on the original test data rises with every generation, and keeping 10 % of the original data limits the rise; "
        "the generated data loses the original distribution's tails first.",
        "",
        verdict(ppl["pure"], ppl["mixed"]),
        "",
        *comparison(ppl, data, baseline, config),
        "",
        f"- **Perplexity on held-out human text**: the teacher before fine-tuning {baseline['heldout_ppl']:.3f}; pure "
        f"{listing(ppl['pure'])}; mixed {listing(ppl['mixed'])}.",
        f"- **Tails** (tokens and bigrams seen at most {config.rare_count}× in all the human training documents, of which "
        f"generation 0's {config.blocks} human blocks hold {original['rare_tokens_kept']:.0%} and {original['rare_bigrams_kept']:.0%}): "
        f"rare tokens kept, pure "
        f"{listing(data['rare_tokens_kept']['pure'])}, mixed {listing(data['rare_tokens_kept']['mixed'])}; rare bigrams kept, "
        f"pure {listing(data['rare_bigrams_kept']['pure'])}, mixed {listing(data['rare_bigrams_kept']['mixed'])}.",
        f"- **Diversity of the training text**: distinct-2 pure {listing(data['distinct_2']['pure'])}, mixed "
        f"{listing(data['distinct_2']['mixed'])}; self-BLEU pure {listing(data['self_bleu']['pure'])}, mixed "
        f"{listing(data['self_bleu']['mixed'])}; MiniLM spread pure {listing(data['spread']['pure'])}, mixed "
        f"{listing(data['spread']['mixed'])}.",
        "",
        "## Per run",
        "",
        "| run | trained on | held-out ppl | held-out bpb | rare tokens kept | rare bigrams kept | distinct-2 | self-BLEU | spread | tokens/record |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        d = r["training_data"]
        lines.append(f"| {name} | {r['trained_on']} | {r['heldout_ppl']:.3f} | {r['heldout_bpb']:.4f} | {d['rare_tokens_kept']} | "
                     f"{d['rare_bigrams_kept']} | {d['distinct_2']} | {d['self_bleu']} | {d['spread']} | {d['tokens_per_record']} |")
    lines += ["", "The columns after the held-out ones describe the text the run trained on (generation 0: the human blocks).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def collapse(params_path: str = "params.yaml", commit: bool = False) -> dict:
    params = load_params(params_path)
    raw = yaml.safe_load(Path(params_path).read_text())
    config = params.collapse
    runs = plan(config)
    _, tokenizer = load_model(config.teacher, fix="run `dvc repro teacher` first (make collapse does)")
    human = human_text(config, tokenizer)
    tails = rare_units(human.blocks, config.rare_count)
    done = recorded()
    children = {run.parent for run in runs if run.parent}
    for run in runs:
        if run.name in done and all(child.name in done for child in runs if child.parent == run.name):
            continue
        blocks = human.training_blocks(config, run.seed)
        texts = [tokenizer.decode(ids) for ids in blocks]
        workdir = execute(run, run_params(raw, config, run), config, texts, blocks, human.heldout, generate=run.name in children)
        if run.name not in done:
            result = run_result(run, workdir, training_texts(run, config, texts), tokenizer, tails, config)
            record(result, commit)
            done[run.name] = result
            log.info("%s: held-out perplexity %.3f", run.name, result["heldout_ppl"])
    results = {run.name: done[run.name] for run in runs}
    first = [tokenizer.decode(ids) for ids in human.training_blocks(config, config.seeds[0])]
    baseline = zero_shot(config, raw, first, human.heldout, commit)
    original = data_metrics(first, tokenizer, tails, config)
    write_metrics(METRICS, {"human_text": original, "zero_shot": baseline, "runs": results})
    plot(results, original, baseline, config, PLOT)
    report(results, original, baseline, config, raw, REPORT)
    log.info("wrote %s, %s and %s", METRICS, PLOT, REPORT)
    return results


def main(argv=None) -> None:
    parser = stage_arguments(__doc__.splitlines()[0])
    parser.add_argument("--commit", action="store_true", help="commit reports/collapse_runs.jsonl as each run finishes")
    args = parser.parse_args(argv)
    collapse(args.params, args.commit)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_stage(main)
