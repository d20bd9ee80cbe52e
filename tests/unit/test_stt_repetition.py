"""The short-window STT's pure parts: which window an utterance gets, and the repetition guard that sends a
looping decode back to Whisper's 30 s window."""

from __future__ import annotations

import pytest

from voicecli.engines.stt import (
    COMPRESSION_RATIO_MAX,
    FULL_WINDOW_S,
    compression_ratio,
    first_of_loop,
    repeated_ngram,
    repetition,
    token_budget,
    window_for,
)


@pytest.mark.parametrize(
    ("audio_s", "floor_s", "window_s"),
    [
        (3.0, 10.0, 10.0),  # the floor
        (0.4, 10.0, 10.0),
        (9.5, 10.0, 10.5),  # audio + 1 s
        (3.123, 2.0, 4.14),  # rounded up to whole encoder positions (20 ms)
        (28.5, 10.0, 29.5),
        (29.0, 10.0, FULL_WINDOW_S),  # no room for the margin: Whisper's window
        (35.0, 10.0, FULL_WINDOW_S),
        (3.0, 0.0, FULL_WINDOW_S),  # floor 0: short windows off
        (3.0, 45.0, FULL_WINDOW_S),
    ],
)
def test_window_for(audio_s: float, floor_s: float, window_s: float) -> None:
    assert window_for(audio_s, floor_s) == pytest.approx(window_s)


@pytest.mark.parametrize(
    "text",
    [
        "What is the weather like today?",
        "Turn off the lights.",
        "No, no, no.",  # a short repetition is speech
        "I think, I think, I think it was Tuesday.",
        "Yes.",
        "",
        "My phone keeps losing its battery charge by the middle of the afternoon, even though I barely use it. "
        "What could be causing that, and how can I fix it?",
        "One, two, three, four, five, six, seven, eight, nine, ten.",
    ],
)
def test_ordinary_speech_is_not_a_loop(text: str) -> None:
    assert repetition(text, n_tokens=len(text.split()) + 2, audio_s=max(1.0, len(text.split()) / 2.5)) == ""


def test_a_sentence_said_over_and_over_is_too_compressible() -> None:
    text = "Turn off the lights. " * 8
    assert compression_ratio(text) > COMPRESSION_RATIO_MAX
    assert repetition(text, n_tokens=40, audio_s=10.0) == "compression"


@pytest.mark.parametrize(
    "text",
    [
        "Thank you. Thank you. Thank you. Thank you.",  # 2 words x 4
        "the the the the the the the the",  # 1 word x 8
        "how far away is how far away is",  # 4 words x 2
        "Set a timer for ten minutes. For ten minutes. For ten minutes.",  # 3 words x 3 at the end
    ],
)
def test_a_short_loop_is_a_repeated_ngram(text: str) -> None:
    assert compression_ratio(text) <= COMPRESSION_RATIO_MAX  # too short for the compression test
    assert repetition(text, n_tokens=12, audio_s=10.0) == "ngram"


@pytest.mark.parametrize(
    "words",
    [
        "no no no",  # 1 word x 3: too few copies
        "thank you thank you thank you",  # 2 words x 3
        "one two three one two three",  # 3 words x 2
        "a b c d e a b c d f",  # not back to back identical
    ],
)
def test_repeated_ngram_lets_short_repetitions_through(words: str) -> None:
    assert not repeated_ngram(words.split())


def test_more_tokens_than_speech_can_hold_is_a_loop() -> None:
    budget = token_budget(3.0)
    assert 40 < budget < 100  # generous for 3 s of fast speech (~6 tokens/s), far below Whisper's 224
    assert repetition("What is the weather like today?", n_tokens=budget, audio_s=3.0) == "tokens"
    assert repetition("What is the weather like today?", n_tokens=budget - 1, audio_s=3.0) == ""
    assert token_budget(20.0) > token_budget(3.0)


LOOP = "Give me a short recipe for pancakes"


@pytest.mark.parametrize(
    ("text", "first"),
    [
        (" ".join([LOOP] * 11), LOOP),  # real tiny.en on a 7 s window, up to the token cap
        (f"{LOOP}. {LOOP}. {LOOP}. Give me a", f"{LOOP}."),  # the last copy cut short by the cap
        ("What time is it? What time is it?", "What time is it?"),
        (LOOP, None),  # said once: no loop
        ("the the the the the the the the", None),  # one word over and over is no phrase
        ("yes no yes no yes no yes no", None),
        ("Set a timer for ten minutes ten minutes ten minutes ten minutes", None),  # a loop from mid-way: 30 s
        ("What is it? What is it? Tell me.", None),
    ],
)
def test_a_whole_utterance_said_over_and_over_is_cut_to_its_first_copy(text: str, first: str | None) -> None:
    assert first_of_loop(text) == first
