import os

# make test runs two pytest-xdist workers: each, and every stage it starts, computes on one thread, as
# two torch processes of two threads each on a 2-core machine would spin against each other
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = REPO / "tests" / "fixtures"


def pytest_assertrepr_compare(op, left, right):
    """Unequal file contents explained by their first difference: with CI set, pytest diffs the whole
    operands, which for two model files takes hours."""
    if op == "==" and isinstance(left, bytes) and isinstance(right, bytes) and max(len(left), len(right)) > 1000:
        first = next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
        return [f"{len(left):,} bytes != {len(right):,} bytes", f"first difference at byte {first:,}"]


def stage(workdir: Path, *args: str, check: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
    """Run ``python -m stages.<args>`` in ``workdir`` as DVC would."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env_vars)
    result = subprocess.run([sys.executable, "-m", *args], cwd=workdir, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stderr}")
    return result


def split_builtin_records(root: Path, records: int, train: int) -> None:
    """``records`` built-in records downloaded into root: the first ``train`` as
    data/dedup/train.parquet, the rest as data/heldout/builtin.parquet, then
    scored by run_quality, as the pipeline leaves them for the judges stage."""
    import pyarrow.parquet as pq

    from synthtrain.params import parse_params
    from synthtrain.sources.download import download

    download(parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": records}}}), "builtin", root)
    pool = pq.read_table(root / "data/raw/builtin.parquet")
    for path, rows in (("data/dedup/train.parquet", pool.slice(0, train)), ("data/heldout/builtin.parquet", pool.slice(train))):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, root / path)
    run_quality(root)


def write_train_tokens(root: Path) -> None:
    """data/tokens/ from root's data/dedup/train.parquet as the training mix (the eval stage fits its n-gram
    baselines on data/tokens/train), by the tokenize stage with root's params and models/tokenizer."""
    (root / "data/mix").mkdir(parents=True, exist_ok=True)
    (root / "data/mix/train.parquet").symlink_to(root / "data/dedup/train.parquet")
    stage(root, "stages.tokenize")


def save_untrained_model(root: Path, seq_len: int, end_tokens: tuple[str, ...] = ()) -> None:
    """models/current: an untrained 1M model (seed 0) with models/tokenizer, stopping at EOS and ``end_tokens``."""
    import torch
    from transformers import GenerationConfig

    from synthtrain.model import build_model, llama_config
    from synthtrain.tokens.encoding import load_tokenizer

    tokenizer = load_tokenizer(root / "models/tokenizer")
    torch.manual_seed(0)
    model = build_model(llama_config("1M", len(tokenizer), seq_len, tokenizer.eos_token_id, tokenizer.pad_token_id))
    model.save_pretrained(root / "models/current")
    tokenizer.save_pretrained(root / "models/current")
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, *map(tokenizer.convert_tokens_to_ids, end_tokens)],
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(root / "models/current")


def run_quality(root: Path) -> Path:
    """The quality_score and quality stages, in this process, on root's
    data/dedup/train.parquet, with scorers trained on small samples so that
    they take a second or two: data/quality/scored.parquet, which the judges
    stage trains on."""
    from synthtrain.params import parse_params
    from synthtrain.quality.decide import quality_stage

    params = parse_params({"sources": {"builtin": {"kind": "builtin"}}, "quality": {
        "workers": 1, "classifier": {"train_records": 500}, "reference_lm": {"train_records": 1000, "calibration_records": 100}}})
    quality_stage(params, root / "data/dedup/train.parquet", root)
    return root / "data/quality/scored.parquet"


def write_preference_judge(root: Path) -> Path:
    """models/preference_judge as the judge_check stage writes it, trained in a
    second on the real reference's replies to its first two prompts."""
    import numpy as np

    from synthtrain.evaluation.judge_check import read_reference
    from synthtrain.evaluation.preference_judge import DIRECTORY, Features, PreferenceJudge

    reference = read_reference(SHARED_DATA / "judged/alpaca_eval2")
    first = np.flatnonzero(reference.reply_prompt < 2)
    features = Features(hash_bits=12)
    judge = PreferenceJudge.train(features, features.transform([reference.replies[i] for i in first]), reference.reply_model[first],
                                  reference.leaderboard, alpha=10.0)
    (root / DIRECTORY).mkdir(parents=True, exist_ok=True)
    judge.save(root / DIRECTORY)
    return root / DIRECTORY


@pytest.fixture(scope="session")
def teacher_project(tmp_path_factory) -> Path:
    """A project where the teacher stage ran (about half a minute): models/teachers/smollm2-135m-instruct."""
    root = tmp_path_factory.mktemp("smollm2")  # not "teacher": tests name their tiny teachers teacher0, teacher1, ...
    (root / "params.yaml").write_text(yaml.safe_dump({"sources": {"builtin": {"kind": "builtin"}}}))
    result = stage(root, "stages.teacher")
    assert "de-quantized into models/teachers/smollm2-135m-instruct/" in result.stderr
    return root


@pytest.fixture
def write_params(tmp_path):
    """Write a params file with the given sources (and other sections) into tmp_path."""

    def write(sources: dict, **sections) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({"sources": sources, **sections}))
        return path

    return write


def build_teacher(path: Path, end_logit: float = 3.0, seed: int = 0) -> Path:
    """A tiny chat teacher saved like models/current: it writes words (a random
    bigram model over 300 word tokens) and ends its turn with a probability of
    about 1/8 per token, so its replies are short, sometimes empty and sometimes
    capped: every reject reason of the generate stage occurs."""
    from transformers import GenerationConfig

    from synthtrain.model import build_model, llama_config
    from synthtrain.tokens.bpe import train_bpe
    from synthtrain.tokens.chat import IM_END

    texts = (SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines()[:3000]
    tokenizer = train_bpe(texts, 1024, split_digits=True)
    vocab = tokenizer.get_vocab()
    word_ids = sorted(i for token, i in vocab.items() if token.startswith("Ġ") and token[1:].isalpha() and len(token) > 3)[:300]
    end = vocab[IM_END]
    config = llama_config("1M", len(tokenizer), 256, tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():  # no attention or MLP output: the last hidden state is the current token's embedding
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding, head = model.model.embed_tokens.weight, model.lm_head.weight
        embedding.normal_(0.0, 1.0)
        embedding[:, 0] = 8.0  # a constant direction: after the norm, about 5.7 in every hidden state
        head.zero_()
        head[:, 0] = -3.0  # every token but the words and the end of the turn: never
        head[word_ids] = torch.randn(len(word_ids), config.hidden_size) * 0.25
        head[word_ids, 0] = 0.0
        head[end, 0] = end_logit / 5.7
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, end], pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    return path
