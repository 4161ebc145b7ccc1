"""Rule-of-thumb scores in the spirit of the Gopher, C4 and FineWeb filters,
plus a refusal detector and a re-check of worked answers.

Every function takes a ``Units`` batch and returns one value per record.
Character classes are read off UTF-8 bytes with numpy (an ASCII letter, digit,
space or punctuation byte; for other characters the lead byte's block: Latin,
Greek, Cyrillic, CJK... count as letters, the U+2000 punctuation block as
punctuation, Latin-1 signs, arrows, dingbats, box drawing and emoji as symbols).
That is exact for ASCII and close elsewhere, and 20x faster than regexes.
"""

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synthtrain.quality.units import ASSISTANT, Units
from synthtrain.text import mix64, ngram_hashes, word_hashes

# Gopher's stop words: real prose uses at least two of them.
STOPWORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_STOPWORD_HASHES = np.sort(word_hashes(pa.array([" ".join(STOPWORDS)]))[0])

# Lines of navigation, cookie banners, footers and shop widgets (C4's and
# FineWeb's markers), and navigation bars: a line that is not a table row with
# two or more spaced separators ("Home | News | Shop", "Home > Articles > Science").
BOILERPLATE = (r"cookie|privacy policy|terms of (use|service)|all rights reserved|©|\bsign up\b|\blog in\b|subscribe|newsletter"
               r"|follow us|sitemap|skip to (content|main)|add to (cart|basket|wishlist)|^share:|read more|click here|javascript"
               r"|^\s*[^|\s].*\s[|›»>·•]\s.*\s[|›»>·•]\s")
MAX_BOILERPLATE_LINE = 200  # characters

# UTF-8 read as Windows-1252 or Latin-1: a lead byte's character (Â Ã â ð...)
# followed by a continuation byte's (€ ™ “ ¦ ...), and U+FFFD, the mark of a
# failed decode.
MOJIBAKE = r"[ÂÃÅÆâãðï][\x{80}-\x{BF}€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]|\x{FFFD}"

# Refusal and moralising phrasing of assistant turns, after the filter lists
# used for the uncensored WizardLM and Dolphin data sets. A strong pattern is a
# refusal or an AI disclaimer on its own; a moralising one counts half.
REFUSAL = (r"\bas an ai\b|\bas a language model|\bai language model|\bi(?:'m| am) (?:just )?an ai\b|\bi(?:'m| am) (?:so |very |truly )?sorry,? but"
           r"|\bi apologi[sz]e,? but|\bi (?:cannot|can't|can not|won't|will not|am unable to|am not able to|'m unable to|'m not able to)"
           r" (?:help|assist|provide|answer|comply|fulfil|do that|create|generate|write|support|engage|share|give|discuss)"
           r"|\bi (?:do not|don't) have the (?:ability|capability|capacity)|\bnot (?:able|allowed|permitted) to (?:provide|answer|help|assist)"
           r"|\bi(?:'m| am) (?:unable|not able|not allowed|not permitted)|\bagainst my (?:programming|guidelines|principles)"
           r"|\bcontent polic(?:y|ies)|\bopenai\b|\bi(?:'m| am) not (?:programmed|designed) to")
MORALISING = (r"\bit(?: is|'s) (?:not |never )?(?:appropriate|ethical|acceptable|responsible)\b|\bi must (?:emphasi[sz]e|stress|remind|point out|caution)"
              r"|\bit(?: is|'s) important to (?:note|remember|consider|recogni[sz]e) that|\bethical (?:guidelines|standards|considerations|principles)"
              r"|\bhate speech\b|\b(?:harmful|offensive|inappropriate|illegal) (?:content|activities|behaviou?r|or)|\bplease (?:note|remember) that"
              r"|\brespectful(?:ly)?\b|\bconsult (?:a|with a) (?:professional|qualified)|\bi (?:would )?(?:strongly )?(?:advise|encourage|urge) (?:you|against)")

# A reply cut off mid-sentence ends in a connective sign or a function word.
UNFINISHED = r"(?:[,:=+\-–—(&/]|\b(?:the|a|an|and|or|but|of|to|in|on|at|by|for|with|from|is|are|was|were|that|which|if|as))\s*$"

# "12 + 7 = 19", "3 × 4 × 2 = 24": integers joined by operators, then a result.
EQUATION = re.compile(r"(?<![\d.])(\d+(?:\s*[-+×*/÷]\s*\d+)+)\s*=\s*(-?\d+)(?!\d|\.\d)")
EXPRESSION = re.compile(r"(?<![\d.])\d+(?:\s*[-+×*/÷]\s*\d+)+(?!\d|\.\d)")
TOKEN = re.compile(r"\d+|[-+×*/÷]")
FINAL_ANSWER = re.compile(r"(?:final answer|the answer is|^answer)\s*:?\s*(.+?)\s*\.?\s*$", re.IGNORECASE)
NOT_ALNUM = re.compile(r"[\W_]+")
NUMBER = re.compile(r"-?\d+")


def _byte_classes(texts: pa.StringArray) -> dict[str, np.ndarray]:
    """Per text: counts of letters, digits, spaces, punctuation and symbols."""
    texts = texts.cast(pa.string())
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset: texts.offset + len(texts) + 1].astype(np.int64)
    data = texts.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[: offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    following = np.concatenate([raw[1:], [0]]).astype(np.uint8)
    lower = raw | 0x20
    classes = {
        "letters": ((lower >= 0x61) & (lower <= 0x7A)) | ((raw >= 0xC3) & (raw <= 0xE1)) | ((raw >= 0xE3) & (raw <= 0xEF)),
        "digits": (raw >= 0x30) & (raw <= 0x39),
        "spaces": (raw == 0x20) | (raw == 0x0A) | (raw == 0x09) | (raw == 0x0D),
        "punctuation": np.isin(raw, np.frombuffer(b".,;:!?'\"()-", dtype=np.uint8)) | ((raw == 0xE2) & (following == 0x80)),
        "chars": (raw & 0xC0) != 0x80,
    }
    counts = {}
    for name, mask in classes.items():
        total = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        counts[name] = total[offsets[1:]] - total[offsets[:-1]]
    counts["symbols"] = counts["chars"] - counts["letters"] - counts["digits"] - counts["spaces"] - counts["punctuation"]
    return counts


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _duplicate_fraction(keys: np.ndarray, owner: np.ndarray, records: int) -> np.ndarray:
    """Per record: the share of its items whose key occurred before in the same
    record. The record goes into the top 24 bits of a 64-bit sort key (a batch
    has far fewer than 2**24 records), the item's key into the other 40: one
    plain sort, no argsort; two items of a record collide with odds 2**-40."""
    combined = np.sort((owner.astype(np.uint64) << np.uint64(40)) | (keys.astype(np.uint64) >> np.uint64(24)))
    repeat = np.flatnonzero(combined[1:] == combined[:-1]) + 1
    repeated = np.bincount((combined[repeat] >> np.uint64(40)).astype(np.int64), minlength=records)
    return _ratio(repeated, np.bincount(owner, minlength=records))


def text_statistics(units: Units, ngram: int) -> dict[str, np.ndarray]:
    """Length, word length, character classes, duplication, boilerplate, mojibake, stop words."""
    records = units.records
    classes = {name: units.per_record(count) for name, count in _byte_classes(units.texts).items()}
    words = units.per_record(units.unit_words())
    visible = classes["chars"] - classes["spaces"]

    lines = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(units.texts, "\n")))
    line_unit = pc.list_parent_indices(pc.split_pattern(units.texts, "\n")).to_numpy()
    spoken = pc.greater(pc.utf8_length(lines), 0).to_numpy(zero_copy_only=False)
    lines, line_owner = lines.filter(pa.array(spoken)), units.owner[line_unit[spoken]]
    line_chars = pc.utf8_length(lines).to_numpy(zero_copy_only=False).astype(np.float64)
    line_ids = mix64(pc.dictionary_encode(lines).indices.to_numpy(zero_copy_only=False).astype(np.uint64))  # spread over 64 bits
    # Lines of only signs ("}", "---") repeat in code and tables by design.
    worded = pc.match_substring_regex(lines, r"[\p{L}\p{N}]").to_numpy(zero_copy_only=False)
    # A marker makes a short line boilerplate; a paragraph that mentions cookies is not.
    boilerplate = pc.match_substring_regex(lines, BOILERPLATE, ignore_case=True).to_numpy(zero_copy_only=False) & (line_chars <= MAX_BOILERPLATE_LINE)

    unit_ngrams, ngram_unit = ngram_hashes(units.hashes, units.word_offsets, ngram, short=False)
    stopword = np.searchsorted(_STOPWORD_HASHES, units.hashes).clip(max=len(_STOPWORD_HASHES) - 1)
    is_stopword = _STOPWORD_HASHES[stopword] == units.hashes
    word_owner = np.repeat(units.owner, units.unit_words())
    distinct_stopwords = np.unique(word_owner[is_stopword] * len(STOPWORDS) + stopword[is_stopword])
    return {
        "words": words,
        "mean_word_length": _ratio(classes["letters"] + classes["digits"], words),
        "alpha_ratio": _ratio(classes["letters"], visible),
        "symbol_ratio": _ratio(classes["symbols"], visible),
        "dup_line_fraction": _duplicate_fraction(line_ids[worded], line_owner[worded], records),
        "dup_ngram_fraction": _duplicate_fraction(unit_ngrams, units.owner[ngram_unit], records),
        "boilerplate_fraction": _ratio(np.bincount(line_owner, line_chars * boilerplate, minlength=records),
                                       np.bincount(line_owner, line_chars, minlength=records)),
        "mojibake": units.per_record(pc.count_substring_regex(units.texts, MOJIBAKE).to_numpy(zero_copy_only=False)),
        # Gopher's stop-word rule is for documents; a chat turn can be two words.
        "stopwords": np.where(units.answer < 0, np.bincount(distinct_stopwords // len(STOPWORDS), minlength=records), np.nan),
    }


def _answers(units: Units) -> tuple[pa.Array, np.ndarray]:
    """Per record, the text judged as the reply: the last assistant turn of a
    conversation, the text of a document."""
    last = np.where(units.answer >= 0, units.answer, units.offsets[:-1])
    return units.texts.take(pa.array(last)), last


def reply_statistics(units: Units) -> dict[str, np.ndarray]:
    """Refusal, unfinished ending, and reply length relative to its question."""
    is_assistant = units.role == ASSISTANT
    assistant = units.texts.filter(pa.array(is_assistant))
    strong = np.zeros(len(units.role))
    moralising = np.zeros(len(units.role))
    strong[is_assistant] = pc.count_substring_regex(assistant, REFUSAL, ignore_case=True).to_numpy(zero_copy_only=False)
    moralising[is_assistant] = pc.count_substring_regex(assistant, MORALISING, ignore_case=True).to_numpy(zero_copy_only=False)
    conversation = units.answer >= 0
    refusal = np.minimum(1.0, units.per_record(strong) + 0.5 * units.per_record(moralising))

    replies, reply_unit = _answers(units)
    unfinished = pc.match_substring_regex(replies, UNFINISHED, ignore_case=True).to_numpy(zero_copy_only=False)
    unit_words = units.unit_words()
    question_words = np.where(units.question >= 0, unit_words[units.question.clip(min=0)], 0)
    response_ratio = unit_words[reply_unit] / np.maximum(question_words, 1)
    return {
        "refusal": np.where(conversation, refusal, np.nan),
        "unfinished": unfinished.astype(np.float64),
        "response_ratio": np.where(conversation & (units.question >= 0), response_ratio, np.nan),
    }


def _evaluate(expression: str) -> int | None:
    """Left to right with × and / first, integers only; None if not exact."""
    tokens = TOKEN.findall(expression)
    terms, signs, value = [], ["+"], int(tokens[0])
    for op, number in zip(tokens[1::2], map(int, tokens[2::2])):
        if op in "×*":
            value *= number
        elif op in "/÷":
            if number == 0 or value % number:
                return None
            value //= number
        else:
            terms.append(value)
            signs.append(op)
            value = number
    terms.append(value)
    return sum(t if s == "+" else -t for s, t in zip(signs, terms))


def answer_errors(question: str | None, reply: str) -> int:
    """Mistakes a reader can find without knowing the world: equations in the
    reply that do not hold, and a final answer that nothing before it supports.

    A numeric final answer is supported by a result in the reply ("= 24"), a
    number stated in it, or the value of an expression in the question ("What
    is 23 + 68?"); a text answer by appearing, letters and digits only, in the
    question or the working. Replies with no working are not judged."""
    errors = sum(_evaluate(left) != int(right) for left, right in EQUATION.findall(reply))
    lines = reply.rstrip().rsplit("\n", 1)
    final = FINAL_ANSWER.search(lines[-1]) if len(lines) == 2 else None
    if final is None:
        return errors
    answer, working, question = final.group(1), lines[0], question or ""
    if NUMBER.fullmatch(answer.replace(",", "")):
        value = int(answer.replace(",", ""))
        supported = {int(n) for n in NUMBER.findall(working)} | {_evaluate(e) for e in EXPRESSION.findall(question)}
        checkable = EQUATION.search(working) or EXPRESSION.search(question)
        return errors + int(bool(checkable) and value not in supported)
    folded = NOT_ALNUM.sub("", answer.casefold())
    return errors + int(bool(folded) and folded not in NOT_ALNUM.sub("", (question + working).casefold()))


def answer_check(units: Units) -> np.ndarray:
    """``answer_errors`` of each conversation's last exchange; NaN for documents."""
    errors = np.full(units.records, np.nan)
    conversation = np.flatnonzero(units.answer >= 0)
    errors[conversation] = 0
    replies = units.texts.take(pa.array(units.answer[conversation]))
    # Only replies that show working or give a final answer can be checked.
    worked = pc.match_substring_regex(replies, r"=|final answer|answer:", ignore_case=True).to_numpy(zero_copy_only=False)
    rows = conversation[worked]
    for row, question, reply in zip(rows, units.text_of(units.question[rows]), units.text_of(units.answer[rows])):
        errors[row] = answer_errors(question, reply)
    return errors
