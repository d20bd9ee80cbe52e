"""The STT non-speech filter: what the pipeline answers and what it ignores."""

from __future__ import annotations

import pytest

from voicecli.engines.stt import classify, is_hallucination, normalize, sentence_case

# Numbers as faster-whisper reports them.
CLEAR = {"no_speech_prob": 0.02, "avg_logprob": -0.2}  # a confident decode of real speech
SILENT = {"no_speech_prob": 0.85, "avg_logprob": -1.4}  # Whisper's own "not speech" verdict
DOUBTFUL = {"no_speech_prob": 0.45, "avg_logprob": -0.5}  # some doubt, but not Whisper's skip rule
SHAKY = {"no_speech_prob": 0.1, "avg_logprob": -0.9}  # speech-like window, low-confidence decode


@pytest.mark.parametrize("text", ["", "   ", ".", "...", " ?! ", "-", "♪ ♪", "…", "[ ]"])
def test_empty_or_punctuation_only_is_never_speech(text: str) -> None:
    assert classify(text, **CLEAR) is False


@pytest.mark.parametrize(
    "text",
    [
        "Thank you.",
        " you",
        "Thanks for watching!",
        "Thank you for watching.",
        "Bye.",
        "Bye-bye.",
        "Subtitles by the Amara.org community",
        "Transcribed by ESO. Translated by —",
        "Please subscribe.",
    ],
)
def test_known_hallucinations_are_dropped_when_whisper_doubts_it_heard_speech(text: str) -> None:
    assert is_hallucination(text)
    assert classify(text, **DOUBTFUL) is False
    assert classify(text, **SHAKY) is False
    assert classify(text, **SILENT) is False


@pytest.mark.parametrize("text", ["Thank you.", "Bye.", "Okay."])
def test_user_really_saying_thanks_is_heard(text: str) -> None:
    assert classify(text, **CLEAR) is True


def test_ordinary_sentences_survive_some_doubt() -> None:
    text = "What is the weather like today?"
    assert not is_hallucination(text)
    assert classify(text, **CLEAR) is True
    assert classify(text, **DOUBTFUL) is True
    assert classify(text, **SHAKY) is True


def test_whispers_skip_rule_drops_any_text() -> None:
    assert classify("turn the lights off", **SILENT) is False
    # Either number alone is not enough for ordinary text: that is Whisper's own rule as well.
    assert classify("turn the lights off", no_speech_prob=0.9, avg_logprob=-0.3) is True
    assert classify("turn the lights off", no_speech_prob=0.1, avg_logprob=-1.5) is True


def test_a_hallucination_inside_a_real_sentence_is_kept() -> None:
    text = "thank you for the help with my taxes"
    assert not is_hallucination(text)
    assert classify(text, **DOUBTFUL) is True


def test_normalize_keeps_words_and_digits_only() -> None:
    assert normalize("  Thanks,  for WATCHING!! ") == "thanks for watching"
    assert normalize("It's 3.14") == "it s 3 14"
    assert normalize("¿Qué?") == "qué"


@pytest.mark.parametrize(
    ("heard", "said"),
    [
        ("which planet is our solar system", "Which planet is our solar system"),
        ("Which planet is our solar system", "Which planet is our solar system"),
        (" étoile la plus proche", "Étoile la plus proche"),
        ("3 minutes, please.", "3 minutes, please."),
        ("...and then", "...and then"),
        ("", ""),
    ],
)
def test_a_transcript_starts_like_a_sentence_so_partial_and_final_words_share_their_first_token(
    heard: str, said: str
) -> None:
    """Whisper writes "which planet..." in one pass and "Which planet..." in the next: the LLM's prompt prefilled
    with the first would share no token of the user's words with the second (pipeline.prefill)."""
    assert sentence_case(heard) == said
