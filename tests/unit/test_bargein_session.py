"""The session with a barge-in second opinion (`--echo aec`), on the scripted timeline of test_session:
a proposal the confirmer rejects leaves the reply playing; one it accepts stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from tests.fakes import RATE, REPLY, FakeLLM, FakeSpeaker, FakeSTT, FakeTTS, ScriptedMic, SimClock, marker_classifier
from voicecli.config import TalkConfig, VadConfig
from voicecli.engines.base import Transcript
from voicecli.events import Event
from voicecli.pipeline.bargein import Verdict
from voicecli.pipeline.history import History
from voicecli.pipeline.session import Session
from voicecli.pipeline.vad import TurnDetector

VAD = VadConfig()


REPLY_S = 0.25 * len(REPLY.split())  # FakeTTS: a quarter second per word


def run(
    confirm: Callable[[float, float], Verdict],
    over: tuple[float, float] | Sequence[tuple[float, float]] = (0.5, 1.5),
    seconds: float = 10.0,
    said: Sequence[str] = (),
) -> tuple[Session, FakeSpeaker, list[Event]]:
    """The question, then "speech" over (start, end) seconds after the reply's first sample; the mic runs
    for `seconds` (every reply must be over by then). `said`: what whisper hears in each utterance (default:
    a description of its length)."""

    async def main() -> tuple[Session, FakeSpeaker, list[Event]]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = FakeLLM(clock, ttft=0.1, per_token=0.02)
        events: list[Event] = []

        spans = [over] if isinstance(over[0], float) else over

        def voiced(t: float) -> bool:
            p = speaker.play_start(1)
            return 0.2 <= t < 1.2 or (p is not None and any(p + a <= t < p + b for a, b in spans))

        session = Session(
            source=ScriptedMic(clock, speaker, voiced, seconds),
            sink=speaker,
            stt=ScriptedSTT(clock, said) if said else FakeSTT(clock, 0.1),
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
        await asyncio.wait_for(session.run(), timeout=15)
        return session, speaker, events

    return asyncio.run(main())


class ScriptedSTT(FakeSTT):
    """Hears the given texts, one per utterance, in order."""

    def __init__(self, clock: SimClock, said: Sequence[str]) -> None:
        super().__init__(clock, 0.1)
        self.said = list(said)

    async def transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        await self.clock.sleep(self.latency)
        text = self.said.pop(0) if self.said else "nothing more"
        return Transcript(text=text, is_speech=True, audio_s=len(audio) / RATE, compute_s=self.latency)


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


def test_a_slow_barge_in_decision_says_why() -> None:
    """The event tells a late verdict (the confirmer said no for a while) from a late question (asked long after
    the onset): what CI logs of a slow barge-in need to be read."""

    def after_300ms(onset: float, now: float) -> Verdict:
        return verdict(now - onset >= 0.299)

    _, _, events = run(after_300ms)
    [barge] = [e for e in events if e.kind == "barge_in"]
    asked = barge.data["asked_ms"]
    assert 100 <= asked <= 140  # first asked half the minimum after the onset (100 ms, to the frame) ...
    assert barge.data["refused"] == round((300 - asked) / 20)  # ... then said no every frame until 300 ms


def test_the_echo_of_a_reply_s_last_words_does_not_become_a_turn() -> None:
    """Speech that began in the reply's last 300 ms and runs on after it (the echo's tail, as on the rig)
    is judged by the confirmer even though the reply has ended by the time the utterance is complete."""
    session, _, events = run(lambda onset, now: verdict(False), over=(REPLY_S - 0.3, REPLY_S + 0.7))
    assert [r["turn"] for r in session.records] == [1]  # no second turn from its own voice
    assert session.records[0]["interrupted"] is False
    assert any(e.kind == "discarded" and e.data.get("reason") == "not the user" for e in events)


def test_the_user_who_starts_as_the_reply_ends_is_answered() -> None:
    """The same timing, but the confirmer is sure only after 400 ms, when the reply is over: the utterance
    becomes the next turn."""
    late = verdict(True), verdict(False)
    session, _, _ = run(
        lambda onset, now: late[0] if now - onset >= 0.4 else late[1], over=(REPLY_S - 0.3, REPLY_S + 0.7), seconds=16.0
    )
    assert [r["turn"] for r in session.records] == [1, 2]
    assert session.records[0]["interrupted"] is False and session.records[1]["user"]


def test_a_barge_in_that_is_the_reply_s_own_words_is_never_answered() -> None:
    """The echo passes the acoustic rules (the confirmer accepts it) and cuts the reply; whisper then hears the
    reply's own words, as on the -10 dB rig ("It's all being spilled."): the turn is dropped, not answered."""
    session, _, events = run(lambda onset, now: verdict(True), said=("What is the weather?", "Sure, here is a short"))
    assert [e.kind for e in events].count("barge_in") == 1
    [dropped] = [e for e in events if e.kind == "stt_rejected"]
    assert dropped.data["reason"] == "own voice" and dropped.data["matched_words"] == 5
    assert [r["user"] for r in session.records if r.get("user")] == ["What is the weather?"]
    assert [e.kind for e in events].count("llm_first_token") == 1  # one reply: nothing answered its own voice


def test_a_user_who_talks_over_the_reply_with_their_own_words_is_answered() -> None:
    session, _, events = run(lambda onset, now: verdict(True), said=("What is the weather?", "Stop, is it sunny?"))
    assert not [e for e in events if e.kind == "stt_rejected"]
    assert [r["user"] for r in session.records if r.get("user")] == ["What is the weather?", "Stop, is it sunny?"]


def test_a_short_first_word_is_judged_from_the_onset_not_from_the_vad_s_voiced_frames() -> None:
    """ "Stop, tell me ...": the canceller's double-talk suppression left "Stop," 80 ms of voiced frames, then the
    comma's pause. The verdict is asked 100 ms after the onset, not once the VAD has heard 100 ms of voice (that
    waited for "tell me", 0.5 s later, and the reply played on over the user)."""

    def after_100ms(onset: float, now: float) -> Verdict:
        return verdict(now - onset >= 0.1)

    _, speaker, events = run(after_100ms, over=[(0.5, 0.58), (1.0, 1.6)])
    [barge] = [e for e in events if e.kind == "barge_in"]
    onset = speaker.play_start(1) + 0.5  # type: ignore[operator]
    [flush_t] = speaker.flushes
    assert flush_t <= onset + 0.1 + 0.041, flush_t - onset
    assert barge.data["asked_ms"] <= 120
