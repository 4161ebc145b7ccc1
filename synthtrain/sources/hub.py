"""``kind: hub``: a Hugging Face Hub dataset streamed with
``datasets.load_dataset(name, config, split=split, streaming=True)``.

The four datasets of the research plan are recognised by name and normalised
from their published schemas; ``normaliser:`` names one for a copy of such a
dataset under another name (a mirror, or a local directory laid out like the
hub repository, as the tests use).
"""

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from synthtrain.sources.formats import Parsed, Rejected, parse_row
from synthtrain.params import HubSource, StageError
from synthtrain.records import InvalidRecord

# normaliser -> (row format, implied category)
NORMALISERS = {
    "openhermes": ("sharegpt", "instruction"),  # conversations: [{from: system|human|gpt, value, weight}]
    "cosmopedia": ("text", "knowledge"),  # text; prompt, seed_data, audience, format go to meta
    "magpie": ("sharegpt", "instruction"),  # conversations: [{from: human|gpt, value}]
    "fineweb_edu": ("text", "web"),  # text, score, int_score
}
KNOWN_DATASETS = {
    "teknium/OpenHermes-2.5": "openhermes",
    "HuggingFaceTB/cosmopedia": "cosmopedia",
    "Magpie-Align/Magpie-Pro-300K-Filtered": "magpie",
    "HuggingFaceFW/fineweb-edu": "fineweb_edu",
}
# Fields whose content already lives in the record (Magpie repeats its
# conversation as instruction/response).
DROP_FIELDS = {"magpie": {"instruction", "response"}}


def normaliser_for(source: HubSource) -> str:
    if source.normaliser:
        return source.normaliser
    for dataset, normaliser in KNOWN_DATASETS.items():
        if source.name.rstrip("/").endswith(dataset):
            return normaliser
    raise StageError(f"hub dataset '{source.name}' has no known schema; set normaliser: to one of {', '.join(NORMALISERS)}, "
                     "or download it and use kind: local")


def category_for(source: HubSource) -> str:
    return source.category or NORMALISERS[normaliser_for(source)][1]


def read(source: HubSource, timeout_s: float) -> Iterator[Parsed | Rejected]:
    import datasets  # imported here: it is slow to import and only this kind needs it

    normaliser = normaliser_for(source)
    fmt = NORMALISERS[normaliser][0]
    unreachable = (f"cannot stream hub dataset '{source.name}' (config {source.config!r}, split {source.split!r}): {{}}. "
                   "Offline? Use kind: local with a downloaded copy, or kind: builtin.")
    if not os.path.isdir(source.name):
        # huggingface_hub retries a failed request for ~25 s; one connection
        # attempt tells within seconds whether the hub can be reached at all.
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
            socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
        except OSError as exc:
            raise StageError(unreachable.format(f"{endpoint.hostname} is unreachable ({exc})")) from None
    try:
        rows = iter(datasets.load_dataset(source.name, source.config, split=source.split, streaming=True))
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise StageError(unreachable.format(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")) from None
    provenance = {"hub": source.name, "config": source.config, "split": source.split}
    number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:
            raise StageError(unreachable.format(f"failed after {number} rows: {type(exc).__name__}: {exc}")) from None
        location = f"{source.name}[{number}]"
        number += 1
        row = {k: v for k, v in row.items() if k not in DROP_FIELDS.get(normaliser, ())}
        if source.min_int_score is not None and (row.get("int_score") or 0) < source.min_int_score:
            yield Rejected(location, "below_min_int_score", f"int_score {row.get('int_score')} < {source.min_int_score}", row.get("text"))
            continue
        try:
            yield from parse_row(row, fmt, location, row, provenance)
        except InvalidRecord as exc:
            yield Rejected(location, exc.reason, str(exc), row)
