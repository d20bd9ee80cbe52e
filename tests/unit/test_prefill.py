"""Think while the user speaks (pipeline.prefill): partial transcripts every quarter second of speech prefill the LLM
with the user's words so far, never after the pause, never during a reply, never without a local LLM."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeLLM, FakeSpeaker, FakeSTT, FakeTTS, ScriptedMic, SimClock, marker_classifier
from voicecli.config import TalkConfig, VadConfig
from voicecli.engines.base import ChatMessage
from voicecli.events import Event
from voicecli.pipeline.history import History
from voicecli.pipeline.prefill import COVER_SLACK_S
from voicecli.pipeline.session import Session
from voicecli.pipeline.vad import TurnDetector

VAD = VadConfig()


class PrefillLLM(FakeLLM):
    def __init__(self, clock: SimClock) -> None:
        super().__init__(clock)
        self.prefills: list[tuple[float, list[ChatMessage]]] = []
        self.stops: list[float] = []  # stop_prefill() calls

    def prefill(self, messages: list[ChatMessage]) -> asyncio.Future[int]:
        self.prefills.append((self.clock.now, list(messages)))
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.set_result(len(messages[-1].content.split()))
        return done

    def stop_prefill(self) -> None:
        self.stops.append(self.clock.now)


def run(
    speech: tuple[float, float], llm_cls: type[FakeLLM] = PrefillLLM, on: bool = True
) -> tuple[FakeLLM, list[Event]]:
    async def main() -> tuple[FakeLLM, list[Event]]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = llm_cls(clock)
        events: list[Event] = []
        session = Session(
            source=ScriptedMic(clock, speaker, lambda t: speech[0] <= t < speech[1], speech[1] + 6.0),
            sink=speaker, stt=FakeSTT(clock, 0.1), llm=llm, tts=FakeTTS(clock),
            history=History("You are a test.", 2000, llm.count_tokens), vad_cfg=VAD,
            talk_cfg=TalkConfig(prefill_while_speaking=on),
            emit=events.append, clock=clock, detector=TurnDetector(VAD, classifier=marker_classifier),
        )  # fmt: skip
        await asyncio.wait_for(session.run(), timeout=20)
        return llm, events

    return asyncio.run(main())


class PartialSTT(FakeSTT):
    """The partial words' own worker: records when it is frozen and continued (WhisperSTT.freeze)."""

    def __init__(self, clock: SimClock, latency: float) -> None:
        super().__init__(clock, latency)
        self.freezes: list[tuple[float, bool]] = []

    def freeze(self, frozen: bool) -> None:
        self.freezes.append((self.clock.now, frozen))


class SlowTailSTT(PartialSTT):
    """A partials' worker that is starved for the tail partial only (the longest audio, 3.44 s)."""

    def latency_for(self, seconds: float) -> float:
        return 1.0 if seconds > 3.4 else self.latency


class LongerTailSTT(PartialSTT):
    """The tail partial (the longest audio) takes 0.3 s: one and a half times a partial's usual 0.2 s."""

    def latency_for(self, seconds: float) -> float:
        return 0.3 if seconds > 3.4 else self.latency


class StarvedPartialSTT(PartialSTT):
    """A partials' worker at niceness 19 next to a busy program (WhisperSTT.keeps_up)."""

    keeps_up = False


def run_with_partial_worker(
    spans: list[tuple[float, float]],
    stt_s: float = 0.1,
    partial_s: float = 0.3,
    vad_cfg: VadConfig = VAD,
    partial_cls: type[PartialSTT] = PartialSTT,
) -> tuple[FakeSTT, PartialSTT, PrefillLLM, list[Event]]:
    """One turn per span of speech, the partial words on a worker of their own; `stt_s` / `partial_s`: how long
    the pause's transcription and a partial one take."""

    async def main() -> tuple[FakeSTT, PartialSTT, PrefillLLM, list[Event]]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = PrefillLLM(clock)
        stt, partial = FakeSTT(clock, stt_s), partial_cls(clock, partial_s)
        events: list[Event] = []
        session = Session(
            source=ScriptedMic(clock, speaker, lambda t: any(a <= t < b for a, b in spans), spans[-1][1] + 6.0),
            sink=speaker, stt=stt, llm=llm, tts=FakeTTS(clock), partial_stt=partial,
            history=History("You are a test.", 2000, llm.count_tokens), vad_cfg=vad_cfg,
            talk_cfg=TalkConfig(prefill_while_speaking=True),
            emit=events.append, clock=clock, detector=TurnDetector(vad_cfg, classifier=marker_classifier),
        )  # fmt: skip
        await asyncio.wait_for(session.run(max_turns=len(spans)), timeout=20)
        return stt, partial, llm, events

    return asyncio.run(main())


def test_the_partial_words_worker_is_frozen_from_the_pause_until_the_user_speaks_again() -> None:
    """The partials run on a worker of their own, which gives its cores to the pause's transcription and the
    reply: frozen at every pause (a partial may still be running), continued when the user speaks again."""
    # (the second ends 100 ms after a partial starts: no partial heard it all, see the last tests)
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.4), (9.0, 11.24)])
    pauses = [e.t for e in events if e.kind == "pause"]
    starts = [e.t for e in events if e.kind == "speech_start"]
    assert len(pauses) == 2 and len(starts) == 2
    assert partial.calls and all(s < 3.4 for s in partial.calls[:3])  # the partials went to their own worker
    assert stt.finished and not any(c < 1.0 for c in stt.calls)  # the main worker: the pause and the turn only
    frozen = [t for t, f in partial.freezes if f]
    continued = [t for t, f in partial.freezes if not f]
    # At the tail partial, 40 ms into the silence (the pause signal comes 80 ms later): a partial still in flight
    # gives its core to the tail, on the main worker.
    assert frozen == pytest.approx([p - 0.1 for p in pauses], abs=0.03)
    assert pauses[0] < continued[0] <= 9.3  # the next speech; the first found nothing frozen
    assert len(continued) == len(frozen)  # the last one at the end of the session: never left stopped
    assert [e.kind for e in events].count("llm_done") == 2


def test_a_long_question_is_prefilled_while_it_is_spoken() -> None:
    llm, events = run((0.2, 3.4))
    assert isinstance(llm, PrefillLLM)
    pause = next(e.t for e in events if e.kind == "pause")
    times = [t for t, _ in llm.prefills]
    assert len(times) >= 2 and all(t < pause for t in times)  # every second of speech, all before the pause
    first = llm.prefills[0][1]
    assert first[0].role == "system" and first[-1].role == "user"
    assert first[-1].content.startswith("question of")  # FakeSTT's words, all of them (the LLM holds its last
    assert len(first[-1].content.split()) == 4  # token back: LlamaLLM.prefill)
    assert [e.kind for e in events].count("llm_done") == 1  # the reply is still asked once, whole
    prefilled = [e for e in events if e.kind == "prefill"]
    assert len(prefilled) == len(times) and all(e.data["tokens"] == 4 for e in prefilled)


def test_a_short_question_has_nothing_to_prefill() -> None:
    llm, _ = run((0.2, 0.4))  # shorter than a partial's quarter second
    assert isinstance(llm, PrefillLLM) and llm.prefills == []


def test_it_is_on_by_default_and_needs_an_llm_that_prefills() -> None:
    assert TalkConfig().prefill_while_speaking is True  # measured faster on 2 cores (config.TalkConfig)
    llm, events = run((0.2, 3.4), on=False)
    assert isinstance(llm, PrefillLLM) and llm.prefills == []
    _, events = run((0.2, 3.4), llm_cls=FakeLLM)
    assert not [e for e in events if e.kind == "prefill"]
    assert [e.kind for e in events].count("llm_done") == 1  # the turn itself is answered as ever


def test_a_judge_of_its_own_is_prefilled_with_the_same_stable_words() -> None:
    """The semantic end of turn's own model (vad.turn_model) gets the words too: at the pause its verdict, which
    the reply waits for, evaluates only the tail (SmolLM2: 2-8 tokens instead of the whole question)."""
    from voicecli.pipeline.turn_end import Judge, Thresholds

    async def main() -> tuple[PrefillLLM, list[tuple[float, list[ChatMessage]]], list[Event]]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = PrefillLLM(clock)
        judged: list[tuple[float, list[ChatMessage]]] = []

        def score(messages: object) -> asyncio.Future[float | None]:
            done: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
            done.set_result(0.5)
            return done

        def prefill(messages: list[ChatMessage]) -> asyncio.Future[int]:
            judged.append((clock.now, list(messages)))
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            done.set_result(1)
            return done

        judge = Judge(score, "You judge.", shares_prompt=False, name="own", th=Thresholds(), prefill=prefill)  # type: ignore[arg-type]
        judge.usable = True
        events: list[Event] = []
        session = Session(
            source=ScriptedMic(clock, speaker, lambda t: 0.2 <= t < 3.4, 9.4), sink=speaker, stt=FakeSTT(clock, 0.1),
            llm=llm, tts=FakeTTS(clock), history=History("You are a test.", 2000, llm.count_tokens), vad_cfg=VAD,
            talk_cfg=TalkConfig(), emit=events.append, clock=clock, judge=judge,
            detector=TurnDetector(VAD, classifier=marker_classifier),
        )  # fmt: skip
        await asyncio.wait_for(session.run(), timeout=20)
        return llm, judged, events

    llm, judged, events = asyncio.run(main())
    pause = next(e.t for e in events if e.kind == "pause")
    assert len(judged) >= 2 and all(t < pause for t, _ in judged)
    assert [m[-1].content for _, m in judged] == [m[-1].content for _, m in llm.prefills]  # the same words
    assert all(m[0].content == "You judge." and len(m) == 2 for _, m in judged)  # its own prompt: no history


def test_partial_words_are_not_prefilled_after_the_pause() -> None:
    """A partial still being transcribed at the pause is superseded by the pause's own transcript; prefilling its
    words then only delays the verdict queued behind them on the LLM's worker (a 30 ms verdict took 119 ms), and
    a prefill still running slows the pause's transcription beside it."""
    # Partials back to back (slower than a quarter second of speech): one started at 3.16 s ends 90 ms after the
    # pause, before the pause's own transcript (0.3 s).
    _, _, llm, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.3, partial_s=0.45)
    pause = next(e.t for e in events if e.kind == "pause")
    times = [t for t, _ in llm.prefills]
    assert len(times) >= 2 and max(times) < pause  # the words heard while speaking, none after
    # and a prefill still running stops at the tail partial (40 ms into the silence), and again at the pause
    assert llm.stops == pytest.approx([pause - 0.1, pause], abs=0.03)
    assert [e.kind for e in events].count("llm_done") == 1


def first(events: list[Event], kind: str) -> Event:
    return next(e for e in events if e.kind == kind)


def test_the_pause_takes_the_words_transcribed_after_the_first_40_ms_of_silence() -> None:
    """The tail partial: 40 ms into the silence the words are transcribed on the partials' worker; the pause signal
    (120 ms) finds that transcript done and prepares the reply on it at once, instead of transcribing for ~0.1 s
    on the main worker first. The turn's words are all of them."""
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.1, partial_s=0.08)
    pause = first(events, "pause").t
    assert stt.calls == []  # the main worker never ran
    assert partial.calls[-1] == pytest.approx(3.4 + 0.04, abs=0.001)  # all the speech and 40 ms of silence
    assert first(events, "reply_prepared").t == pytest.approx(pause, abs=0.021)  # on the pause's frame, not 0.1 s later
    assert first(events, "stt_done").data["text"] == "question of 3.44 seconds"
    assert partial.freezes == []  # the worker was not stopped under the pause's own transcript

    # Off (tail_ms 0): the pause transcribes on the main worker, and the reply is prepared 0.1 s later.
    stt, _, _, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.1, partial_s=0.08, vad_cfg=VadConfig(tail_ms=0))
    assert len(stt.calls) == 1
    assert first(events, "reply_prepared").t == pytest.approx(first(events, "pause").t + 0.1, abs=0.021)


def test_a_starved_tail_partial_does_not_hold_the_pause() -> None:
    """A tail partial that takes far longer than usual (a worker starved next to a busy program): 0.15 s after the
    pause the main worker transcribes too, and the first transcript in is the turn's."""
    stt, _, _, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.1, partial_s=0.08, partial_cls=SlowTailSTT)
    pause = first(events, "pause").t
    assert len(stt.calls) == 1
    assert first(events, "reply_prepared").t == pytest.approx(pause + 0.15 + 0.1, abs=0.021)
    assert first(events, "stt_done").data["text"] == "question of 3.52 seconds"  # the pause's own, all the words


def test_on_a_slower_host_the_pause_waits_for_a_tail_partial_at_its_usual_pace() -> None:
    """Whisper takes 0.2 s on a partial and 0.3 s on the tail here (a host twice as slow as the Xeon the 0.15 s
    wait was set on): the tail, within its usual pace, is waited for past 0.15 s after the pause, and the same words
    are not transcribed a second time beside it (on 2 cores the reply's prompt then ran on one thread next to
    that redundant transcription)."""
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.3, partial_s=0.2, partial_cls=LongerTailSTT)
    pause = first(events, "pause").t
    assert "tail_overdue" not in [e.kind for e in events]
    assert stt.calls + partial.calls[-1:] == [3.44, 3.32]  # the tail (on the idle main worker), the last partial
    assert first(events, "reply_prepared").t == pytest.approx(3.44 + 0.3, abs=0.021)
    assert first(events, "reply_prepared").t > pause + 0.15 + 0.02
    assert first(events, "stt_done").data["text"] == "question of 3.44 seconds"


def test_words_spoken_after_a_tail_are_not_lost() -> None:
    """A 60 ms gap between words starts a tail partial; the user goes on. The pause at the real end takes only a
    transcript that heard every word."""
    _, partial, _, events = run_with_partial_worker([(0.2, 2.0), (2.06, 3.4)], stt_s=0.1, partial_s=0.08)
    assert 2.04 in [round(c, 2) for c in partial.calls]  # the gap's tail partial (the utterance's first 2.04 s)
    heard = float(first(events, "stt_done").data["text"].split()[2])
    # every word: the tail 40 ms after the last, or a partial started on the last voiced frames (COVER_SLACK_S)
    assert 3.4 - COVER_SLACK_S <= heard <= 3.44 + 1e-9
    assert [e.kind for e in events].count("llm_done") == 1


def test_with_a_partial_running_the_tail_goes_to_the_idle_main_worker() -> None:
    """Partials every quarter second keep their worker busy half the time: a tail that finds it busy is transcribed
    on the main worker (idle while the user speaks), not after the partial in flight."""
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.1, partial_s=1.0)
    pause = first(events, "pause").t
    assert stt.calls == [pytest.approx(3.44)]  # the tail, on the main worker; the pause did not transcribe again
    assert first(events, "reply_prepared").t <= pause + 0.021  # the tail (at 3.44 s) + 0.1 s
    assert first(events, "stt_done").data["text"] == "question of 3.44 seconds"
    # the partial in flight stopped when the tail started (40 ms into the silence), not 80 ms later at the pause
    assert [t for t, f in partial.freezes if f] == [pytest.approx(pause - 0.1, abs=0.03)]


def test_the_pause_takes_a_partial_that_heard_every_voiced_frame() -> None:
    """No tail partial started (in a noisy room the VAD keeps calling frames voiced until the pause trims them
    off), but a partial started on the last voiced frames heard every word: the pause takes it, still running and
    not frozen, instead of transcribing the same words again on the main worker."""
    no_tail = VadConfig(tail_ms=0)
    for end in (3.58, 3.60):  # the partial started on the last voiced frame, or one frame (20 ms) before it
        stt, partial, _, events = run_with_partial_worker([(0.2, end)], stt_s=0.1, partial_s=0.15, vad_cfg=no_tail)
        pause = first(events, "pause").t
        assert partial.calls[-1] == pytest.approx(3.58)  # (a partial every ~quarter second of speech)
        assert stt.calls == []  # the main worker never ran
        assert partial.freezes == []
        assert first(events, "stt_done").data["text"] == "question of 3.58 seconds"
        assert first(events, "reply_prepared").t == pytest.approx(3.58 + 0.15, abs=0.021)  # not the pause + 0.1
        assert first(events, "reply_prepared").t < pause + 0.1 - 0.05

    # Three frames (60 ms) before the end: it may have missed a word's end, and the pause transcribes.
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.64)], stt_s=0.1, partial_s=0.15, vad_cfg=no_tail)
    assert partial.calls[-1] == pytest.approx(3.58) and len(stt.calls) == 1
    assert first(events, "stt_done").data["text"] == "question of 3.76 seconds"
    assert [f for _, f in partial.freezes][:1] == [True]  # frozen at the pause, as before


def test_a_partial_that_heard_every_voiced_frame_is_the_tail() -> None:
    """40 ms into the silence a partial started on the last voiced frame is still running: it is the tail partial
    already. Nothing new starts and nothing is frozen (a tail on the main worker froze it, and the pause waited
    for the same words transcribed again, 40 ms later)."""
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.58)], stt_s=0.15, partial_s=0.15)
    assert partial.calls[-1] == pytest.approx(3.58)
    assert stt.calls == [] and partial.freezes == []
    assert first(events, "stt_done").data["text"] == "question of 3.58 seconds"
    assert first(events, "reply_prepared").t == pytest.approx(3.58 + 0.15, abs=0.021)
    # Done before the pause signal: its words are not prefilled (the pause asks the judge and the reply on them, and
    # would queue behind that prefill on the LLM's worker).
    _, partial, llm, events = run_with_partial_worker([(0.2, 3.58)], stt_s=0.15, partial_s=0.1)
    assert partial.calls[-1] == pytest.approx(3.58)
    assert first(events, "reply_prepared").t == pytest.approx(first(events, "pause").t, abs=0.021)
    assert all(t < 3.58 for t, _ in llm.prefills), llm.prefills


def test_next_to_a_busy_program_a_running_partial_is_not_waited_for() -> None:
    """The same partial, on a worker a busy program starves: the tail starts on the main worker and the partial is
    frozen, as before."""
    stt, partial, _, events = run_with_partial_worker(
        [(0.2, 3.58)], stt_s=0.15, partial_s=0.15, partial_cls=StarvedPartialSTT
    )
    assert partial.calls[-1] == pytest.approx(3.58)
    assert stt.calls == [pytest.approx(3.62)]  # the tail, 40 ms into the silence, on the main worker
    assert [f for _, f in partial.freezes][:1] == [True]
    assert first(events, "stt_done").data["text"] == "question of 3.62 seconds"


def test_next_to_a_busy_program_the_tail_goes_to_the_main_worker() -> None:
    """With the partials' worker idle but starved by a busy program (niceness 19: whisper base took the tail 355 ms
    there against ~180 on the main worker, and the pause waited for it), the tail runs on the idle main worker."""
    stt, partial, _, events = run_with_partial_worker(
        [(0.2, 3.4)], stt_s=0.1, partial_s=0.08, partial_cls=StarvedPartialSTT
    )
    assert stt.calls == [pytest.approx(3.44)]  # the tail, 40 ms into the silence, on the main worker
    assert all(c < 3.4 for c in partial.calls)
    assert first(events, "tail").data["worker"] == "main"
    assert first(events, "reply_prepared").t <= first(events, "pause").t + 0.021
    # Where nothing is busy the idle partials' worker takes it, as before.
    stt, partial, _, events = run_with_partial_worker([(0.2, 3.4)], stt_s=0.1, partial_s=0.08)
    assert stt.calls == [] and partial.calls[-1] == pytest.approx(3.44)
    assert first(events, "tail").data["worker"] == "partials"
