"""Word error rate: word-level Levenshtein distance on normalised text.

Normalisation is deliberately simple and the same on both sides: lower case, apostrophes dropped ("what's" ->
"whats"), every other character that is not a letter or digit becomes a space, and whole numbers up to 999
are spelled out ("10" -> "ten", "25" -> "twenty five"), since Whisper writes small numbers either way.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_APOSTROPHES = "'\u2019\u2018`"


def _spell(n: int) -> str:
    """0..999 in words."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" {_spell(rest)}" if rest else "")


def normalize_words(text: str) -> list[str]:
    """The words WER compares: see the module docstring."""
    lowered = "".join(ch for ch in text.lower() if ch not in _APOSTROPHES)
    kept = "".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in lowered)
    words: list[str] = []
    for word in kept.split():
        if word.isdigit() and len(word) <= 3:
            words.extend(_spell(int(word)).split())
        else:
            words.append(word)
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions, deletions, insertions cost 1)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference words) after normalisation."""
    ref = normalize_words(reference)
    return edit_distance(ref, normalize_words(hypothesis)), len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Edits / reference words. An empty reference gives 0.0 for an empty hypothesis, else 1.0 per word."""
    edits, n = word_errors(reference, hypothesis)
    return edits / n if n else float(edits)


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """WER over a corpus: all edits / all reference words (not the mean of per-utterance WERs)."""
    edits = words = 0
    for reference, hypothesis in pairs:
        e, n = word_errors(reference, hypothesis)
        edits += e
        words += n
    return edits / words if words else float(edits)


__all__ = ["corpus_wer", "edit_distance", "normalize_words", "wer", "word_errors"]
