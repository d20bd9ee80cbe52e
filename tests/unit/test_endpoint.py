"""End of turn that reads the transcript (pure), and the session holding an unfinished sentence open."""

from __future__ import annotations

import dataclasses

import pytest

from tests.fakes import REPLY, FakeSTT
from tests.unit.test_session import run_timeline
from voicecli.config import VadConfig
from voicecli.pipeline.endpoint import sounds_unfinished, still_thinking


@pytest.mark.parametrize(
    "text",
    ["I was wondering if...", "What is the weather in Paris and", "Tell me about the, um", "So I went to the",
     "Can you remind me to call my mother because", "I need,", "What is the?", "I think that.",
     "The problem is that.", "I was wondering that", "Tell me about the movie that",
     "How far away is the...", "Which fly to our...", "Actually...", "Wait…"],  # the voice trailing off mid-way
)  # fmt: skip
def test_unfinished(text: str) -> None:
    assert sounds_unfinished(text)


@pytest.mark.parametrize(
    "text",
    ["What is the weather like today?", "Tell me a joke.", "What are you thinking of?", "Stop!", "", "Thanks",
     "Actually, never mind that.", "I like that.", "Don't do that.", "That.",
     "Actually never mind that", "Don't do that",  # whisper tiny.en leaves them unpunctuated
     "Actually, never mind that...", "Set a timer for ten minutes…"],  # ... after a whole command
)  # fmt: skip
def test_finished(text: str) -> None:
    assert not sounds_unfinished(text)


@pytest.mark.parametrize(
    "text",
    ["Tell me about the, um", "What is the weather in Paris and", "So I went to the", "I need,", "Um...",
     "Can you remind me to call my mother because", "How far away is the...", "What is the?", "Set a timer for -",
     "Which fly to our..."],
)  # fmt: skip
def test_a_speaker_still_looking_for_words(text: str) -> None:
    assert still_thinking(text) and sounds_unfinished(text)  # a stronger case of unfinished: held longer


@pytest.mark.parametrize(
    "text",
    ["Set a timer for", "What are you looking for", "I think that.", "Actually...", "Wait…", "I was wondering if...?",
     "How far away is that", "What is the weather like today?", "Tell me a joke.", "Thanks", "", "And?"],
)  # fmt: skip
def test_words_that_may_close_a_turn_whisper_heard_oddly_are_not_held_long(text: str) -> None:
    assert not still_thinking(text)


class TrailingAndSTT(FakeSTT):
    """The first part of the utterance ends on "and" (the user stopped to think)."""

    async def transcribe(self, audio):  # type: ignore[no-untyped-def]
        tr = await super().transcribe(audio)
        seconds = len(audio) / 16000
        return dataclasses.replace(tr, text="What is the weather like and" if seconds < 1.6 else tr.text)


def test_a_pause_after_an_unfinished_sentence_does_not_split_the_turn() -> None:
    # 1 s of speech, a 700 ms pause (longer than the 500 ms hangover), then the rest of the sentence
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 1.9 <= t < 2.9, 12.0, stt_cls=TrailingAndSTT)
    assert [e.kind for e in rig.events].count("eou") == 1, [e.kind for e in rig.events]
    held = [e for e in rig.events if e.kind == "end_of_turn" and e.data["verdict"] == "incomplete"]
    assert held[0].data["by"] == "words"
    assert held and held[0].data["text"].endswith("and")
    [record] = rig.session.records
    assert record["user"].startswith("question of 3.") and record["assistant"] == REPLY  # the whole utterance


def test_the_same_pause_after_a_finished_sentence_ends_the_turn() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 1.9 <= t < 2.9, 14.0)
    assert [e.kind for e in rig.events].count("eou") == 2  # two questions, two answers


class TrailingOffSTT(FakeSTT):
    """Whisper's "..." after a whole command, where the voice trailed off (a benchmark turn waited 1.44 s)."""

    async def transcribe(self, audio):  # type: ignore[no-untyped-def]
        tr = await super().transcribe(audio)
        return dataclasses.replace(tr, text="Actually, never mind that...")


def test_a_whole_command_that_trails_off_ends_at_the_hangover_and_is_not_held_open() -> None:
    held = run_timeline(lambda r, t: 0.2 <= t < 1.2, 12.0, stt_cls=TrailingAndSTT)
    trailed = run_timeline(lambda r, t: 0.2 <= t < 1.2, 12.0, stt_cls=TrailingOffSTT)
    eou = {name: [e.t for e in rig.events if e.kind == "eou"] for name, rig in (("held", held), ("trailed", trailed))}
    assert len(eou["held"]) == len(eou["trailed"]) == 1, eou
    verdicts = [e.data for e in trailed.events if e.kind == "end_of_turn"]
    assert all(v["verdict"] != "incomplete" for v in verdicts), verdicts
    # The held sentence waits unfinished_extra_ms more; the command that trailed off only the hangover.
    extra = VadConfig().unfinished_extra_ms / 1000
    assert eou["trailed"][0] < eou["held"][0] - extra + 0.1, eou
    assert eou["trailed"][0] - 1.2 < VadConfig().hangover_ms / 1000 + 0.15, eou


class WordsBeforeSTT(FakeSTT):
    """The words heard at the first pause: `first` while the audio is under 1.6 s, the whole question after."""

    first = "Can you tell me about the"

    async def transcribe(self, audio):  # type: ignore[no-untyped-def]
        tr = await super().transcribe(audio)
        return dataclasses.replace(tr, text=self.first if len(audio) / 16000 < 1.6 else tr.text)


class ForSTT(WordsBeforeSTT):
    first = "Can you set a timer for"  # a preposition: a whole question may end on one ("What is it for")


def test_a_user_looking_for_a_word_for_a_second_and_a_half_is_not_cut_off() -> None:
    # 1 s of speech, 1.5 s of silence (longer than the hangover and unfinished_extra_ms together), then the rest
    vad = VadConfig()
    assert vad.hangover_ms + vad.unfinished_extra_ms < 1500 < vad.hangover_ms + vad.thinking_extra_ms
    thinking = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 2.7 <= t < 3.7, 14.0, stt_cls=WordsBeforeSTT)
    assert [e.kind for e in thinking.events].count("eou") == 1, [e.kind for e in thinking.events]
    held = [e.data for e in thinking.events if e.kind == "end_of_turn" and e.data["verdict"] == "incomplete"]
    assert held and held[0]["by"] == "words" and held[0]["thinking"], held
    [record] = thinking.session.records
    assert record["user"].startswith("question of 3.") and record["assistant"] == REPLY  # the whole utterance
    # After a preposition the same pause ends the turn at the shorter hold: two turns.
    ended = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 2.7 <= t < 3.7, 14.0, stt_cls=ForSTT)
    assert [e.kind for e in ended.events].count("eou") == 2


def test_a_user_who_stops_after_the_is_answered_once_the_longer_hold_is_over() -> None:
    vad = VadConfig()
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 12.0, stt_cls=WordsBeforeSTT)
    [eou] = [e.t for e in rig.events if e.kind == "eou"]
    hold = (vad.hangover_ms + vad.thinking_extra_ms) / 1000
    assert hold - 0.1 < eou - 1.2 < hold + 0.15, eou  # released after ~2.5 s of silence, not never
    [record] = rig.session.records
    assert record["user"] == "Can you tell me about the" and record["assistant"] == REPLY
