"""Word error rate on normalised text."""

from __future__ import annotations

import pytest

from voicecli.bench.wer import corpus_wer, edit_distance, normalize_words, wer, word_errors


def test_normalisation_ignores_case_punctuation_and_apostrophes() -> None:
    assert normalize_words("What's the WEATHER like, today?!") == ["whats", "the", "weather", "like", "today"]
    assert normalize_words("  bye-bye…  ") == ["bye", "bye"]
    assert normalize_words("") == []


@pytest.mark.parametrize(
    ("text", "words"),
    [("10", "ten"), ("25", "twenty five"), ("100", "one hundred"), ("342", "three hundred forty two"), ("0", "zero")],
)
def test_small_numbers_are_spelled_out(text: str, words: str) -> None:
    assert normalize_words(f"set {text} minutes") == ["set", *words.split(), "minutes"]


def test_long_digit_strings_stay_as_they_are() -> None:
    assert normalize_words("call 5551234") == ["call", "5551234"]


@pytest.mark.parametrize(
    ("ref", "hyp", "distance"),
    [
        ("a b c", "a b c", 0),
        ("a b c", "a x c", 1),  # substitution
        ("a b c", "a c", 1),  # deletion
        ("a b c", "a b b c", 1),  # insertion
        ("a b c", "", 3),
        ("", "a b", 2),
        ("a b c d", "b c d e", 2),  # one deletion at the start, one insertion at the end
        ("kitten sat on the mat", "sitting sat on mat", 2),
    ],
)
def test_edit_distance(ref: str, hyp: str, distance: int) -> None:
    assert edit_distance(ref.split(), hyp.split()) == distance
    assert edit_distance(hyp.split(), ref.split()) == distance  # symmetric


def test_wer_counts_edits_per_reference_word() -> None:
    assert wer("What is the weather like today?", "what is the weather like today") == 0.0
    assert wer("set a timer for ten minutes", "Set a timer for 10 minutes.") == 0.0
    assert wer("what is the weather like today", "what was the weather today") == pytest.approx(2 / 6)
    assert wer("one two", "one two three four") == pytest.approx(1.0)  # insertions can exceed 100 %
    assert wer("", "") == 0.0
    assert wer("", "noise") == 1.0
    assert word_errors("a b c", "a x") == (2, 3)


def test_corpus_wer_weights_by_reference_length() -> None:
    pairs = [
        ("one two three four five six seven eight nine ten", "one two three four five six seven eight nine"),
        ("hi", ""),
    ]
    # 2 edits over 11 words, not the mean of 10 % and 100 %.
    assert corpus_wer(pairs) == pytest.approx(2 / 11)
    assert corpus_wer([]) == 0.0
