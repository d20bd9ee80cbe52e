"""A reply from an LLM slower than the clause it has spoken: the words written so far are cut as a clause
just before the speaker runs dry (pipeline.reply, DRY_MARGIN_S), so the speech has no hole and no word is
lost. On the virtual clock of test_session: FakeTTS speaks a quarter second per word."""

from __future__ import annotations

import asyncio

from tests.fakes import FRAME, FakeLLM, FakeSpeaker, FakeSTT, FakeTTS, ScriptedMic, SimClock, marker_classifier
from voicecli.config import TalkConfig, VadConfig
from voicecli.events import Event
from voicecli.pipeline.history import History
from voicecli.pipeline.session import Session
from voicecli.pipeline.vad import TurnDetector

VAD = VadConfig()
# One comma after the first word, then none for 14 words: the clause after "Sure," ends 2 s of tokens later.
LONG = "Sure, the moon is about four hundred thousand kilometres from the earth on an average day. Ask more!"


def run(per_token: float, reply: str = LONG) -> tuple[FakeSpeaker, FakeTTS, list[Event]]:
    async def main() -> tuple[FakeSpeaker, FakeTTS, list[Event]]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = FakeLLM(clock, reply=reply, ttft=0.1, per_token=per_token)
        tts = FakeTTS(clock)
        events: list[Event] = []
        session = Session(
            source=ScriptedMic(clock, speaker, lambda t: 0.2 <= t < 1.2, 12.0),
            sink=speaker, stt=FakeSTT(clock, 0.1), llm=llm, tts=tts,
            history=History("You are a test.", 2000, llm.count_tokens), vad_cfg=VAD, talk_cfg=TalkConfig(),
            emit=events.append, clock=clock, detector=TurnDetector(VAD, classifier=marker_classifier),
        )  # fmt: skip
        await asyncio.wait_for(session.run(), timeout=15)
        return speaker, tts, events

    return asyncio.run(main())


def holes(speaker: FakeSpeaker) -> list[float]:
    """DAC times of the output ticks inside the reply that ran short (the last one may)."""
    ticks = [(t, n) for t, rid, n in speaker.timeline if rid == 1]
    return [t for t, n in ticks[:-1] if n < FRAME]


def test_a_slow_llm_after_a_one_word_first_clause_leaves_no_hole() -> None:
    speaker, tts, events = run(per_token=0.12)  # 8 words/s: faster than speech (4/s), but after "Sure,"
    assert tts.texts[0] == "Sure,"
    early = [e for e in events if e.kind == "clause_early"]
    assert early, "the words after 'Sure,' were cut before the comma-less clause ended"
    assert holes(speaker) == []
    assert " ".join(tts.texts) == LONG  # every word spoken, in order, once
    assert speaker.played_samples(1) == int(0.25 * 16000) * len(LONG.split())


def test_a_fast_llm_keeps_its_clauses_whole() -> None:
    """Cut only when due: an LLM well ahead of the speaker leaves every clause at its punctuation."""
    speaker, tts, events = run(per_token=0.01, reply="Sure, I know this one," + LONG.removeprefix("Sure,"))
    assert not [e for e in events if e.kind == "clause_early"]
    whole = "the moon is about four hundred thousand kilometres from the earth on an average day."
    assert tts.texts == ["Sure,", "I know this one,", whole, "Ask more!"]
    assert holes(speaker) == []
