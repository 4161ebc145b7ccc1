"""Text normalisation shared by every stage that compares texts."""

import unicodedata


def normalize(text: str) -> str:
    """Fold Unicode form, case and whitespace, so that texts that differ only in
    those ways compare (and hash) equal."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
