"""The semantic end of turn: the verdict on the words at a pause (pure), the start-up check of a judge, the VAD
ending a pause early, and the session answering at the pause, or taking the user back when they go on."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from tests.unit.test_session import run_timeline
from voicecli.audio.format import FRAME_SAMPLES
from voicecli.config import VadConfig
from voicecli.engines.base import ChatMessage
from voicecli.pipeline import vad
from voicecli.pipeline.turn_end import (
    BY_LLM,
    BY_VAD,
    BY_WORDS,
    COMPLETE,
    FALLBACK,
    INCOMPLETE,
    Judge,
    Thresholds,
    by_probability,
    by_words,
    calibrated,
    closes_request,
)

TH = Thresholds(complete_p=0.2, incomplete_p=0.01)


@pytest.mark.parametrize(
    ("p", "text", "kind", "by"),
    [
        (0.7, "How tall is Mount Everest?", COMPLETE, BY_LLM),
        # whisper's "?" lands after the first half when the user paused there: the question word still tells
        (0.61, "What should I cook? For dinner tonight with rice.", COMPLETE, BY_LLM),
        (0.5, "can you tell me a fun fact about the moon", FALLBACK, BY_LLM),  # unpunctuated: it may go on
        # a command may be the first half of a longer one: left to the hangover, however likely the end token
        (0.2, "Play some jazz.", FALLBACK, BY_LLM),
        (0.77, "Tell me a joke.", FALLBACK, BY_LLM),
        (0.05, "Set a timer.", FALLBACK, BY_LLM),
        (0.001, "Can you tell me?", INCOMPLETE, BY_LLM),
        # whisper leaves a continued sentence unpunctuated: a low score there is no evidence
        (0.0, "which planet in our solar system is the largest", FALLBACK, BY_LLM),
        # whisper's "..." where the voice trailed off, after half a sentence as after a whole one: the hangover
        (0.6, "What should I cook...", FALLBACK, BY_LLM),
        (0.001, "Actually, never mind that...", FALLBACK, BY_LLM),
        (None, "How tall is Mount Everest?", FALLBACK, BY_VAD),
    ],
)
def test_verdict_on_the_probability(p: float | None, text: str, kind: str, by: str) -> None:
    verdict = by_probability(p, text, TH)
    assert (verdict.kind, verdict.by) == (kind, by)


def test_unfinished_words_hold_the_pause_before_any_model_is_asked() -> None:
    verdict = by_words("What is the weather in Paris and")
    assert verdict is not None and (verdict.kind, verdict.by) == (INCOMPLETE, BY_WORDS)
    assert by_words("Set a timer for 10.") is None  # a number ends it, not the "for" before it


@pytest.mark.parametrize(
    ("text", "closed"),
    [("Set a timer for 10 minutes, please.", True), ("Turn off the lights, thanks!", True),
     ("Read me the news, thank you.", True),
     ("Could you please.", False),  # no comma: "please" inside the request, not after it
     ("Yes, please.", False),  # a reply to the assistant's question: too short to be a request of its own
     ("Set a timer for 10 minutes, please...", False),  # the voice trailed off
     ("Set a timer for 10 minutes, please", False),  # unpunctuated: whisper heard it go on
     ("Please, tell me a joke.", False), ("Set a timer for 10 minutes.", False), ("", False)],
)  # fmt: skip
def test_a_request_closed_by_a_courtesy_tag(text: str, closed: bool) -> None:
    assert closes_request(text) is closed
    verdict = by_words(text)
    assert (verdict is not None and (verdict.kind, verdict.by) == (COMPLETE, BY_WORDS)) is closed


def _scores(table: dict[str, float]):  # type: ignore[no-untyped-def]
    def score(messages: Sequence[ChatMessage]) -> asyncio.Future[float | None]:
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        fut.set_result(table.get(messages[-1].content, 0.0))
        return fut

    return score


def test_a_model_that_tells_whole_questions_from_open_phrases_is_trusted_and_one_that_cannot_is_not() -> None:
    async def main() -> tuple[bool, bool]:
        real_like = {"How tall is Mount Everest?": 0.46, "What time is it in London?": 0.3}
        generated_like: dict[str, float] = {}  # no mass on the end token anywhere
        return await calibrated(_scores(real_like), "sys", TH), await calibrated(_scores(generated_like), "sys", TH)

    assert asyncio.run(main()) == (True, False)


def test_the_vad_ends_a_pause_early_when_told_and_only_then() -> None:
    cfg = VadConfig()
    voice = np.full(FRAME_SAMPLES, 3000, np.int16)
    silence = np.zeros(FRAME_SAMPLES, np.int16)

    def run(early: bool) -> float:
        det = vad.TurnDetector(cfg, classifier=lambda f: bool(np.abs(f).max() > 0))
        t = 0.0
        for _ in range(40):
            det.process(voice, t)
            t += 0.02
        while True:
            for ev in det.process(silence, t):
                if isinstance(ev, vad.Paused) and early:
                    det.end_sooner(cfg.pause_ms)
                if isinstance(ev, vad.Utterance):
                    return ev.t_confirmed - ev.t_speech_end
            t += 0.02

    assert run(early=False) == pytest.approx(cfg.hangover_ms / 1000, abs=0.021)
    assert run(early=True) == pytest.approx(cfg.pause_ms / 1000, abs=0.021)


def _judge(p: float, beside_reply: bool = False, order: list[str] | None = None) -> Judge:
    def score(messages: Sequence[ChatMessage]) -> asyncio.Future[float | None]:
        if order is not None:
            order.append("verdict")
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        fut.set_result(p)
        return fut

    judge = Judge(score, "sys", shares_prompt=False, name="fake", th=TH, beside_reply=lambda: beside_reply)
    judge.usable = True
    return judge


def _eou_delay(rig) -> float:  # type: ignore[no-untyped-def]
    eou = next(e for e in rig.events if e.kind == "eou")
    end = next(e for e in rig.events if e.kind == "speech_end")
    return eou.t - end.t


def test_a_judge_that_hears_a_whole_question_ends_the_turn_at_the_pause() -> None:
    speech = lambda r, t: 0.2 <= t < 1.2  # noqa: E731
    plain = run_timeline(speech, 6.0)
    judged = run_timeline(speech, 6.0, judge=_judge(0.8), stt_cls=PunctuatedSTT)
    # pause_ms (120) + the fake STT (100 ms), instead of the 500 ms hangover
    assert _eou_delay(judged) < 0.36 < 0.45 < _eou_delay(plain)
    [verdict] = [e for e in judged.events if e.kind == "end_of_turn"]
    assert verdict.data["verdict"] == COMPLETE and not verdict.data["late"]
    assert judged.session.records[0]["assistant"] == plain.session.records[0]["assistant"]


def test_a_whole_question_ends_at_the_verdict_not_on_the_next_frame() -> None:
    # the transcript takes 110 ms: the verdict comes 10 ms into a 20 ms frame; the turn is confirmed then
    speech = lambda r, t: 0.2 <= t < 1.2  # noqa: E731
    rig = run_timeline(speech, 6.0, judge=_judge(0.8), stt_cls=PunctuatedSTT, stt_latency=0.11)
    [verdict] = [e for e in rig.events if e.kind == "end_of_turn"]
    eou = next(e for e in rig.events if e.kind == "eou")
    assert verdict.data["verdict"] == COMPLETE
    assert eou.t - verdict.t == pytest.approx(0.0, abs=0.002)


@pytest.mark.parametrize("p", [0.8, 0.3, 0.001])
def test_a_judge_beside_the_reply_is_asked_after_the_reply_starts_and_ends_the_turn_alike(p: float) -> None:
    # Two free cores: the reply starts on the transcript, the verdict comes beside it (engines.llm._Lane). Whatever
    # the verdict, the turns and the answers are those of a judge asked first.
    from tests.fakes import FakeLLM

    speech = lambda r, t: 0.2 <= t < 1.2  # noqa: E731
    asked: dict[bool, list[str]] = {False: [], True: []}

    def llm_cls(order: list[str]) -> type[FakeLLM]:
        class Ordered(FakeLLM):
            def chat(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                order.append("reply")
                return super().chat(*args, **kwargs)

        return Ordered

    first, beside = (
        run_timeline(speech, 12.0, judge=_judge(p, b, asked[b]), stt_cls=PunctuatedSTT, llm_cls=llm_cls(asked[b]))
        for b in (False, True)
    )
    assert asked[True][:2] == ["reply", "verdict"]
    assert asked[False][0] == "verdict"  # the reply after it, or (held open) not before the turn ends
    assert _eou_delay(beside) == pytest.approx(_eou_delay(first), abs=0.021)
    assert beside.session.records[0]["assistant"] == first.session.records[0]["assistant"]


def test_a_judge_leaves_a_command_to_the_hangover_however_sure_it_is() -> None:
    # "Tell me a joke." + "about computers and cats.": the words cannot tell that pause from an end
    speech = lambda r, t: 0.2 <= t < 1.2  # noqa: E731
    rig = run_timeline(speech, 6.0, judge=_judge(0.8))  # FakeSTT: no question mark
    [verdict] = [e for e in rig.events if e.kind == "end_of_turn"]
    assert (verdict.data["verdict"], verdict.data["by"]) == (FALLBACK, BY_LLM)
    assert _eou_delay(rig) == pytest.approx(0.5, abs=0.03)


def test_a_judge_that_hears_an_open_phrase_holds_the_pause_open() -> None:
    # 1 s of speech, a 700 ms pause (longer than the hangover), then more: one turn
    speech = lambda r, t: 0.2 <= t < 1.2 or 1.9 <= t < 2.9  # noqa: E731
    held = run_timeline(speech, 12.0, judge=_judge(0.001), stt_cls=PunctuatedSTT)
    assert [e.kind for e in held.events].count("eou") == 1


def test_a_user_who_goes_on_after_an_early_end_is_answered_once_for_the_whole_question() -> None:
    # 1 s of speech, a 450 ms pause: the judge ends the turn at ~300 ms; the user goes on at 450 ms
    speech = lambda r, t: 0.2 <= t < 1.2 or 1.65 <= t < 2.4  # noqa: E731
    rig = run_timeline(speech, 12.0, judge=_judge(0.8), stt_cls=PunctuatedSTT)
    went_on = [e for e in rig.events if e.kind == "barge_in"]
    assert [e.data["during"] for e in went_on] == ["went_on"]
    [record] = rig.session.records  # one answer, to all of it
    assert record["user"] == "question of " + f"{rig.stt.calls[-1]:.2f} seconds?"
    assert rig.stt.calls[-1] > 2.0  # both parts, transcribed together
    assert len(rig.history.messages()) == 3  # system, the whole question, its answer: the cut turn is gone


def test_a_user_who_pauses_shorter_than_complete_min_ms_after_a_whole_question_is_one_turn() -> None:
    # "What should I cook?" [300 ms] "For dinner tonight?": the verdict (at ~220 ms) calls the first half complete
    speech = lambda r, t: 0.2 <= t < 1.2 or 1.5 <= t < 2.4  # noqa: E731

    def went_on(rig) -> int:  # type: ignore[no-untyped-def]
        return len([e for e in rig.events if e.kind == "barge_in"])

    at_verdict = run_timeline(speech, 12.0, judge=_judge(0.8), stt_cls=PunctuatedSTT)
    assert went_on(at_verdict) == 1  # the default: the turn ended at the verdict and the user's words cut it
    held = run_timeline(speech, 12.0, judge=_judge(0.8), stt_cls=PunctuatedSTT, vad=VadConfig(complete_min_ms=350))
    assert next(e.data["verdict"] for e in held.events if e.kind == "end_of_turn") == COMPLETE
    assert [e.kind for e in held.events].count("eou") == 1 and went_on(held) == 0  # no reply started and cut
    assert len(held.session.records) == 1
    assert held.stt.calls[-1] > 2.0  # both parts, in one transcription


class PunctuatedSTT:
    """FakeSTT with a question mark: a low end-of-turn score after punctuation is evidence."""

    def __new__(cls, clock, latency=0.1):  # type: ignore[no-untyped-def]
        from tests.fakes import FakeSTT

        class _P(FakeSTT):
            async def transcribe(self, audio):  # type: ignore[no-untyped-def]
                tr = await super().transcribe(audio)
                import dataclasses

                return dataclasses.replace(tr, text=tr.text + "?")

        return _P(clock, latency)


def test_no_verdict_is_waited_for_when_the_transcription_took_the_hangover() -> None:
    # whisper base on 2 cores, busy: 330 ms of the 380 ms between the pause and the hangover's end
    speech = lambda r, t: 0.2 <= t < 1.2  # noqa: E731
    rig = run_timeline(speech, 12.0, judge=_judge(0.8), stt_latency=0.33)
    [verdict] = [e for e in rig.events if e.kind == "end_of_turn"]
    assert (verdict.data["verdict"], verdict.data["by"]) == (FALLBACK, BY_VAD)
    prepared = next(e for e in rig.events if e.kind == "reply_prepared")
    assert prepared.t <= verdict.t + 0.001  # the reply was started at once, not held for a verdict
    assert _eou_delay(rig) == pytest.approx(0.5, abs=0.03)


class PleaseSTT:
    """FakeSTT hearing a request closed by "please" (or, `bare`, the same request without it)."""

    def __new__(cls, clock, latency=0.1, bare: bool = False):  # type: ignore[no-untyped-def]
        from tests.fakes import FakeSTT

        text = "Set a timer for ten minutes." if bare else "Set a timer for ten minutes, please."

        class _P(FakeSTT):
            async def transcribe(self, audio):  # type: ignore[no-untyped-def]
                tr = await super().transcribe(audio)
                return dataclasses.replace(tr, text=text)

        return _P(clock, latency)


def test_a_request_closed_by_please_is_answered_at_the_pause_without_a_judge() -> None:
    speech = lambda r, t: 0.2 <= t < 1.2  # noqa: E731
    closed = run_timeline(speech, 6.0, stt_cls=PleaseSTT)  # no judge at all: the words decide
    bare = run_timeline(speech, 6.0, stt_cls=lambda c, lat: PleaseSTT(c, lat, bare=True))  # type: ignore[arg-type]
    # pause_ms (120) + the fake STT (100 ms), instead of the 500 ms hangover the bare command waits for
    assert _eou_delay(closed) < 0.36 < 0.45 < _eou_delay(bare)
    [verdict] = [e for e in closed.events if e.kind == "end_of_turn"]
    assert (verdict.data["verdict"], verdict.data["by"]) == (COMPLETE, BY_WORDS)
    assert any(e.kind == "reply_prepared" for e in closed.events)  # started on the transcript, then adopted
    assert closed.session.records[0]["assistant"] == bare.session.records[0]["assistant"]
