"""Text normalisation shared by every stage that compares texts."""

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Fold Unicode form, case and whitespace, so that texts that differ only in
    those ways compare (and hash) equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WHITESPACE.sub(" ", text).strip()
