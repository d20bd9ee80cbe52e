"""The session with a barge-in second opinion (`--echo aec`), on the scripted timeline of test_session:
a proposal the confirmer rejects leaves the reply playing; one it accepts stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.fakes import RATE, REPLY, FakeLLM, FakeSpeaker, FakeSTT, FakeTTS, ScriptedMic, SimClock, marker_classifier
from voicecli.config import TalkConfig, VadConfig
from voicecli.events import Event
from voicecli.pipeline.bargein import Verdict
from voicecli.pipeline.history import History
from voicecli.pipeline.session import Session
from voicecli.pipeline.vad import TurnDetector

VAD = VadConfig()


def run(confirm: Callable[[float, float], Verdict]) -> tuple[Session, FakeSpeaker, list[Event]]:
    async def main() -> tuple[Session, FakeSpeaker, list[Event]]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = FakeLLM(clock, ttft=0.1, per_token=0.02)
        events: list[Event] = []

        def voiced(t: float) -> bool:  # the question, then 1 s of "speech" from 0.5 s into the reply
            p = speaker.play_start(1)
            return 0.2 <= t < 1.2 or (p is not None and p + 0.5 <= t < p + 1.5)

        session = Session(
            source=ScriptedMic(clock, speaker, voiced, 10.0),
            sink=speaker,
            stt=FakeSTT(clock, 0.1),
            llm=llm,
            tts=FakeTTS(clock),
            history=History("You are a test.", 2000, llm.count_tokens),
            vad_cfg=VAD,
            talk_cfg=TalkConfig(),
            emit=events.append,
            clock=clock,
            detector=TurnDetector(VAD, classifier=marker_classifier),
            barge_confirm=confirm,
            echo_stats=lambda: {"echo_erle_db": 42.0},
        )
        await asyncio.wait_for(session.run(), timeout=120)
        return session, speaker, events

    return asyncio.run(main())


def verdict(ok: bool) -> Verdict:
    return Verdict(ok, 1.0 if ok else 0.0, -20.0, -80.0, 10, -1.0)


def test_a_rejected_barge_in_lets_the_reply_play_on() -> None:
    asked: list[tuple[float, float]] = []

    def never(onset: float, now: float) -> Verdict:
        asked.append((onset, now))
        return verdict(False)

    session, speaker, events = run(never)
    assert asked  # the VAD did propose it ...
    assert [e.kind for e in events].count("barge_in") == 0  # ... the reply was not cut
    assert speaker.flushes == []
    assert speaker.played_samples(1) == int(0.25 * RATE) * len(REPLY.split())  # every word was played
    doubted = [e for e in events if e.kind == "discarded" and e.data.get("reason") == "not the user"]
    assert len(doubted) == 1 and doubted[0].data["retained_db"] == -1.0
    first = session.records[0]
    assert first["interrupted"] is False and first["assistant"] == REPLY
    assert first["timings"]["echo_erle_db"] == 42.0  # the echo figures ride along with each turn


def test_an_accepted_barge_in_stops_the_reply_after_half_the_minimum() -> None:
    def after_100ms(onset: float, now: float) -> Verdict:
        return verdict(now - onset >= 0.1)

    session, speaker, events = run(after_100ms)
    [barge] = [e for e in events if e.kind == "barge_in"]
    onset = speaker.play_start(1) + 0.5  # type: ignore[operator]
    [flush_t] = speaker.flushes
    # with a second opinion, half of barge_in_min_ms (100 of 200 ms) of VAD speech is enough
    assert onset + 0.1 - 0.021 <= flush_t <= onset + 0.1 + 0.041
    assert barge.turn_id == 1 and session.records[0]["interrupted"] is True
