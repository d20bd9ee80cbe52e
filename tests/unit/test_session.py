"""Scripted timelines through the real Session, VAD state machine, chunker and history, with fake engines
and a fake speaker on a virtual audio clock (no audio devices, no real time)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fakes import (
    RATE,
    REPLY,
    FakeLLM,
    FakeSpeaker,
    FakeSTT,
    FakeTTS,
    ScriptedMic,
    SimClock,
    marker_classifier,
)
from voicecli.config import TalkConfig, VadConfig
from voicecli.errors import EngineError
from voicecli.events import Event
from voicecli.pipeline.history import History
from voicecli.pipeline.session import APOLOGY, CONFUSED, STT_APOLOGY, Session
from voicecli.pipeline.turn_end import Judge
from voicecli.pipeline.vad import TurnDetector

VAD = VadConfig()


@dataclass
class Rig:
    clock: SimClock
    speaker: FakeSpeaker
    stt: FakeSTT
    llm: FakeLLM
    tts: FakeTTS
    history: History
    session: Session
    events: list[Event] = field(default_factory=list)

    def kinds(self, turn: int | None = None) -> list[str]:
        return [e.kind for e in self.events if turn is None or e.turn_id == turn]

    def first(self, kind: str, turn: int) -> Event:
        return next(e for e in self.events if e.kind == kind and e.turn_id == turn)


def run_timeline(
    voiced: Callable[[Rig, float], bool],
    seconds: float,
    *,
    stt_latency: float = 0.1,
    llm_ttft: float = 0.1,
    per_token: float = 0.02,
    talk: TalkConfig | None = None,
    llm_cls: type[FakeLLM] = FakeLLM,
    tts_cls: type[FakeTTS] = FakeTTS,
    stt_cls: type[FakeSTT] = FakeSTT,
    transcript: object = None,
    vad: VadConfig = VAD,
    timeout: float = 120,
    judge: Judge | None = None,
) -> Rig:
    async def main() -> Rig:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        stt = stt_cls(clock, stt_latency)
        llm = llm_cls(clock, ttft=llm_ttft, per_token=per_token)
        tts = tts_cls(clock)
        history = History("You are a test.", 2000, llm.count_tokens)
        events: list[Event] = []
        rig_ref: list[Rig] = []
        mic = ScriptedMic(clock, speaker, lambda t: voiced(rig_ref[0], t), seconds)
        session = Session(
            source=mic,
            sink=speaker,
            stt=stt,
            llm=llm,
            tts=tts,
            history=history,
            vad_cfg=vad,
            talk_cfg=talk or TalkConfig(),
            emit=events.append,
            transcript=transcript,  # type: ignore[arg-type]
            clock=clock,
            detector=TurnDetector(vad, classifier=marker_classifier),
            judge=judge,
        )
        rig = Rig(clock, speaker, stt, llm, tts, history, session, events)
        rig_ref.append(rig)
        await asyncio.wait_for(session.run(), timeout=timeout)
        return rig

    return asyncio.run(main())


def reply_samples(text: str) -> int:
    return int(0.25 * RATE) * len(text.split())


def after_play(rig: Rig, turn: int, start: float, length: float, t: float) -> bool:
    """Voiced from `start` s after turn `turn`'s first sample played, for `length` s."""
    p = rig.speaker.play_start(turn)
    return p is not None and p + start <= t < p + start + length


def test_normal_turn_streams_in_stage_order() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 8.0)
    assert rig.session.turns_answered == 1
    [record] = rig.session.records
    assert record["user"] == rig.stt.finished[0]
    assert record["assistant"] == REPLY
    assert record["interrupted"] is False
    # every sample of the reply reached the speaker, once
    assert rig.speaker.played_samples(1) == reply_samples(REPLY)
    # stage timestamps in pipeline order on one clock: the reply was prepared during the hangover (its first
    # clause synthesised before the turn was confirmed) and played only once the turn was confirmed
    order = ["speech_end", "llm_first_token", "first_clause", "tts_first_audio", "eou", "stt_done", "play_start"]
    times = [rig.first(k, 1).t for k in order]
    assert times == sorted(times)
    assert abs(rig.first("speech_end", 1).t - 1.2) < 0.021
    # the pause started STT early, so confirming the turn did not wait for it
    assert rig.first("stt_done", 1).data["speculative"] is True
    assert len(rig.stt.calls) == 1
    # streaming: the first clause was spoken while the LLM was still writing the rest
    assert rig.first("tts_first_audio", 1).t < rig.llm.streams[0].stats.finished_at  # type: ignore[operator]
    ttfa = rig.first("turn_end", 1).data["timings"]["ttfa"]
    assert 0.5 <= ttfa < 1.0  # hangover (0.5 s) + fake STT/LLM/TTS latencies
    assert [m.role for m in rig.history.messages()] == ["system", "user", "assistant"]


def test_barge_in_flushes_cancels_and_keeps_only_what_was_played() -> None:
    # Slow LLM so it is still generating when the user cuts in 200 ms into the reply.
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or after_play(r, 1, 0.2, 1.0, t), 10.0, per_token=0.15)
    onset = rig.speaker.play_start(1) + 0.2  # type: ignore[operator]
    [barge] = [e for e in rig.events if e.kind == "barge_in"]
    assert barge.turn_id == 1 and barge.data["during"] == "speaking"
    # audio stopped within barge_in_min (200 ms) + one frame of the onset
    [flush_t] = rig.speaker.flushes
    assert onset + 0.2 - 0.021 <= flush_t <= onset + 0.2 + 0.041  # the sim clock stamps a frame at its start
    assert all(t <= flush_t for t, rid, _ in rig.speaker.timeline if rid == 1)  # nothing after the flush
    assert rig.llm.streams[0].cancelled
    assert rig.llm.streams[0].produced < len(REPLY.split())
    # history and transcript keep only the words that were played, marked as interrupted
    first, second = rig.session.records
    assert first["interrupted"] is True
    heard = first["assistant"]
    assert heard and REPLY.startswith(heard.rstrip(".,!"))
    played_s = rig.speaker.played_samples(1) / RATE
    assert abs(len(heard.split()) * 0.25 - played_s) <= 0.25
    assistant_msgs = [m.content for m in rig.history.messages() if m.role == "assistant"]
    assert heard in assistant_msgs[0] and assistant_msgs[0] != REPLY
    # then the interrupting utterance is answered in full
    assert second["interrupted"] is False and second["assistant"] == REPLY
    assert rig.speaker.played_samples(2) == reply_samples(REPLY)


def test_stale_stt_result_after_barge_in_is_ignored() -> None:
    # STT takes 1 s; the user goes on talking while the assistant is still thinking.
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 1.8 <= t < 2.6, 12.0, stt_latency=1.0)
    [barge] = [e for e in rig.events if e.kind == "barge_in"]
    assert barge.data["during"] == "thinking"
    # the first (stale) transcription finished, but it never reached the LLM nor the speaker
    assert len(rig.llm.prompts) == 1
    assert rig.speaker.played_samples(1) == 0
    # both stretches of speech were transcribed together and answered once
    [record] = rig.session.records
    assert record["turn"] == 2
    seconds = float(record["user"].split()[2])
    assert seconds >= 1.0 + 0.8  # both utterances (plus pre-roll / hangover)
    assert rig.llm.prompts[0][-1].content == record["user"]
    assert [m.role for m in rig.history.messages()] == ["system", "user", "assistant"]


def test_cough_during_reply_does_not_interrupt() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or after_play(r, 1, 0.6, 0.1, t), 9.0)
    assert "barge_in" not in rig.kinds()
    assert rig.speaker.flushes == []
    [record] = rig.session.records
    assert record["interrupted"] is False
    assert rig.speaker.played_samples(1) == reply_samples(REPLY)


def test_speech_while_thinking_is_answered_as_one_turn() -> None:
    # The user pauses long enough to end the turn, then goes on while the LLM is still thinking.
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.0 or 1.6 <= t < 2.4, 12.0, llm_ttft=1.0)
    assert [e.data["during"] for e in rig.events if e.kind == "barge_in"] == ["thinking"]
    [record] = rig.session.records
    assert record["assistant"] == REPLY
    assert rig.speaker.played_samples(1) == 0
    assert float(record["user"].split()[2]) >= 0.8 + 0.8


def test_half_duplex_ignores_the_mic_while_speaking() -> None:
    rig = run_timeline(
        lambda r, t: 0.2 <= t < 1.2 or after_play(r, 1, 0.2, 1.0, t),
        10.0,
        talk=TalkConfig(barge_in=False),
    )
    assert "barge_in" not in rig.kinds()
    assert rig.session.turns_answered == 1
    assert rig.speaker.played_samples(1) == reply_samples(REPLY)


class FailingLLM(FakeLLM):
    """Raises `error` after a few deltas, like a model that crashes mid-reply."""

    error: Exception = EngineError("the model crashed", hint="")

    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        stream = super().chat(messages, max_tokens)
        if len(self.streams) == 1:
            inner = stream._gen

            async def broken():  # type: ignore[no-untyped-def]
                n = 0
                async for d in inner():
                    if n == 7:
                        raise self.error
                    n += 1
                    yield d

            stream._gen = broken  # type: ignore[method-assign]
        return stream


def test_llm_failure_mid_stream_ends_with_an_apology_and_next_turn_works() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 7.0 <= t < 8.0, 16.0, llm_cls=FailingLLM)
    first, second = rig.session.records
    assert first["assistant"].endswith(APOLOGY)
    assert first["assistant"].startswith("Sure, here is a short answer.")
    assert second["assistant"] == REPLY
    assert "error" in rig.kinds(1)


class FlakyTTS(FakeTTS):
    async def synthesize(self, text: str):  # type: ignore[no-untyped-def]
        if "weather" in text:
            raise EngineError("piper failed on this clause", hint="")
        return await super().synthesize(text)


def test_tts_failure_skips_only_that_clause() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 9.0, tts_cls=FlakyTTS)
    [record] = rig.session.records
    assert "weather" not in record["assistant"]
    assert record["assistant"] == "Sure, here is a short answer. Have a great day!"
    assert any(e.kind == "warning" for e in rig.events)


MESSY = (
    "## Answer\n\n**Sure!** 😀 Here is `code`:\n\n```python\nprint('hi')\n```\n\n"
    "- first point with a [link](https://example.com)\n- second point 🚀\n"
    + " ".join(f"word{'xyzvq'[i % 5]}{'abcdefg'[i % 7]}{'hijklmnopqr'[i % 11]}" for i in range(300))  # no loop
    + " Done."
)


class MessyLLM(FakeLLM):
    def __init__(self, clock, **kw):  # type: ignore[no-untyped-def]
        super().__init__(clock, reply=MESSY, **{**kw, "per_token": 0.005})


def test_markdown_code_emoji_and_endless_text_are_spoken_sensibly() -> None:
    talk = dataclasses.replace(TalkConfig(), max_reply_words=1000)  # this is about clauses, not the cap
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 90.0, llm_cls=MessyLLM, talk=talk)
    spoken = rig.tts.texts
    assert all(len(c.split()) <= 25 for c in spoken)  # forced flushes keep clauses (and memory) bounded
    joined = " ".join(spoken)
    assert "print(" not in joined and "```" not in joined and "**" not in joined and "##" not in joined
    assert "😀" not in joined and "🚀" not in joined and "https://" not in joined
    assert "link" in joined and "code" in joined
    assert joined.endswith("Done.")
    [record] = rig.session.records
    assert record["interrupted"] is False and record["assistant"].count("word") == 300


def test_barge_in_still_works_during_endless_text() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or after_play(r, 1, 3.0, 1.0, t), 95.0, llm_cls=MessyLLM)
    first, second = rig.session.records
    assert first["interrupted"] is True and second["interrupted"] is False
    assert rig.llm.streams[0].cancelled


def test_input_longer_than_the_context_is_truncated_with_a_warning() -> None:
    class LongSTT(FakeSTT):
        async def transcribe(self, audio):  # type: ignore[no-untyped-def]
            tr = await super().transcribe(audio)
            return dataclasses.replace(tr, text=" ".join(["blah"] * 5000))

    async def main() -> list[Event]:
        clock = SimClock()
        speaker = FakeSpeaker(clock)
        llm = FakeLLM(clock)
        events: list[Event] = []
        mic = ScriptedMic(clock, speaker, lambda t: 0.2 <= t < 1.2, 8.0)
        session = Session(
            source=mic, sink=speaker, stt=LongSTT(clock), llm=llm, tts=FakeTTS(clock),
            history=History("You are a test.", 500, llm.count_tokens), vad_cfg=VAD, talk_cfg=TalkConfig(),
            emit=events.append, clock=clock, detector=TurnDetector(VAD, classifier=marker_classifier),
        )  # fmt: skip
        await session.run()
        assert llm.count_tokens(llm.prompts[0]) <= 500
        return events

    events = asyncio.run(main())
    assert any(e.kind == "warning" and "longer than the model's context" in e.data["message"] for e in events)
    assert any(e.kind == "turn_end" and e.data["answered"] for e in events)


class FailingOnceSTT(FakeSTT):
    """The first utterance's transcription fails like a timed-out or twice-crashed worker."""

    async def transcribe(self, audio):  # type: ignore[no-untyped-def]
        if not self.calls:
            self.calls.append(len(audio) / RATE)
            await self.clock.sleep(self.latency)
            raise EngineError("speech recognition timed out", hint="check the CPU load")
        return await super().transcribe(audio)


def test_a_failed_transcription_is_said_out_loud_recorded_and_the_next_turn_works() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 7.0 <= t < 8.0, 16.0, stt_cls=FailingOnceSTT)
    first, second = rig.session.records
    assert first["assistant"] == STT_APOLOGY and first["error"] == "speech recognition timed out"
    assert rig.tts.texts[0] == STT_APOLOGY and rig.speaker.play_start(1) is not None
    assert "error" in rig.kinds(1)
    assert second["assistant"] == REPLY and second["user"]
    assert len(rig.history) == 1  # the failed turn put no words in the user's mouth


class RefusingLLM(FakeLLM):
    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        if len(self.streams) < 2:  # the reply prepared during the hangover, then the turn's own request
            self.streams.append(None)  # type: ignore[arg-type]
            raise EngineError("the language model is not loaded", hint="")
        return super().chat(messages, max_tokens)


def test_an_llm_that_refuses_to_start_gets_an_apology_and_the_next_turn_works() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 7.0 <= t < 8.0, 16.0, llm_cls=RefusingLLM)
    first, second = rig.session.records
    assert first["assistant"] == APOLOGY and first["error"]
    assert second["assistant"] == REPLY


class FullDisk:
    def __init__(self) -> None:
        self.calls = 0

    def append(self, record: object) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")


def test_a_turn_that_cannot_be_recorded_does_not_turn_the_next_question_into_a_barge_in() -> None:
    disk = FullDisk()
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 7.0 <= t < 8.0, 16.0, transcript=disk)
    assert disk.calls == 2
    assert "barge_in" not in rig.kinds()
    assert [r["assistant"] for r in rig.session.records] == [REPLY, REPLY]
    assert any("could not record" in e.data.get("message", "") for e in rig.events if e.kind == "error")


TOKYO_LOOP = "トウキョウ 東京 です. Tokyo, Japan - 07:15. " + "Japan time - 07:15. " * 40


class LoopingLLM(FakeLLM):
    """A weak real model at temperature 0.7 (SmolLM2-135M): another script, then a loop until max_tokens."""

    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        self.reply = TOKYO_LOOP if not self.streams else REPLY
        return super().chat(messages, max_tokens)


def test_a_runaway_reply_is_cut_spoken_only_in_latin_and_not_fed_back() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 12.0 <= t < 13.0, 24.0, llm_cls=LoopingLLM)
    first, second = rig.session.records
    spoken = " ".join(rig.tts.texts)
    assert not any("\u3000" <= ch <= "\u9fff" for ch in spoken), spoken  # no katakana or kanji reaches Piper
    assert first["assistant"].count("Japan time") <= 1, first["assistant"]
    assert len(first["assistant"].split()) < 15
    assert [e.data["reason"] for e in rig.events if e.kind == "reply_cut"] == ["repetition"]
    assert rig.llm.streams[0].cancelled  # generation stopped, not run to max_tokens
    assert rig.llm.streams[0].produced < 30
    # the loop never reaches the history the next reply is generated from
    prompt = " ".join(m.content for m in rig.llm.prompts[1])
    assert "Japan time - 07:15. Japan time" not in prompt and "東京" not in prompt
    assert second["assistant"] == REPLY


class ForeignLLM(FakeLLM):
    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        self.reply = "東京の 現在の 時刻は 午前 七時 です. " * 5
        return super().chat(messages, max_tokens)


def test_a_reply_entirely_in_another_script_is_replaced_by_a_short_apology() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 10.0, llm_cls=ForeignLLM)
    [record] = rig.session.records
    assert record["assistant"] == CONFUSED
    assert rig.tts.texts == [CONFUSED]


class LongLLM(FakeLLM):
    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        nouns = ["whales", "tides", "corals", "storms", "shells", "currents", "islands", "reefs", "waves", "ships"]
        verbs = ["shape", "follow", "feed", "cross", "warm", "hide", "carry", "cool", "move", "mark"]
        sentences = [
            f"The {nouns[i % 10]} {verbs[(3 * i + i // 10) % 10]} the {nouns[(i + 3) % 10]}." for i in range(30)
        ]
        self.reply = " ".join(s.replace(".", " by the sea.") for s in sentences)
        return super().chat(messages, max_tokens)


def test_a_long_reply_ends_on_a_sentence_at_the_word_cap() -> None:
    talk = dataclasses.replace(TalkConfig(), max_reply_words=40)
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 30.0, llm_cls=LongLLM, talk=talk)
    [record] = rig.session.records
    words = record["assistant"].split()
    assert 35 <= len(words) <= 50 and record["assistant"].endswith("sea."), record["assistant"]
    assert [e.data["reason"] for e in rig.events if e.kind == "reply_cut"] == ["length cap"]


def test_stt_done_reports_the_wait_for_the_stt_worker_and_the_window() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 8.0)
    done = rig.first("stt_done", 1)
    assert done.data["queue_wait_s"] == 0.0 and done.data["window_s"] == 30.0  # as FakeSTT reports them


def test_the_reply_is_prepared_during_the_hangover_and_played_only_once_confirmed() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 10.0)
    prepared = next(e for e in rig.events if e.kind == "reply_prepared")
    eou = rig.first("eou", 1)
    assert prepared.t < eou.t  # the LLM was asked during the hangover
    assert len(rig.llm.prompts) == 1  # and that request is the turn's reply: nothing asked twice
    assert rig.first("play_start", 1).t >= eou.t  # nothing was played before the turn was confirmed
    [record] = rig.session.records
    assert record["assistant"] == REPLY and record["timings"]["reply_prepared"] is True
    assert rig.session.replies_prepared == 1 and rig.session.replies_wasted == 0


def test_a_prepared_reply_is_thrown_away_when_the_user_goes_on_talking() -> None:
    # a 300 ms pause mid-sentence: the early pause fires, the reply is prepared, then the user resumes
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 1.5 <= t < 2.5, 12.0)
    assert [e.kind for e in rig.events].count("eou") == 1  # one turn, not split at the pause
    assert "reply_wasted" in rig.kinds()
    assert rig.session.replies_wasted >= 1
    assert rig.llm.streams[0].cancelled  # the prepared stream was stopped
    [record] = rig.session.records
    assert record["user"].startswith("question of 2.")  # answered on the whole utterance
    assert record["assistant"] == REPLY


class ParrotLLM(FakeLLM):
    """A small model that copies the history's marker for an interrupted reply into its own reply."""

    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        self.reply = "Let's hope that you're not too [interrupted by the user] Have a great day!"
        return super().chat(messages, max_tokens)


def test_the_history_marker_for_an_interrupted_reply_is_never_spoken() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2, 10.0, llm_cls=ParrotLLM)
    spoken = " ".join(rig.tts.texts)
    assert "interrupted" not in spoken and "Have a great day!" in spoken


class MarkdownLLM(FakeLLM):
    def chat(self, messages, max_tokens=256):  # type: ignore[no-untyped-def]
        self.reply = "**Sure!**  Here is one *fun* fact: the moon drifts away from us every year."
        return super().chat(messages, max_tokens)


def test_a_reply_played_whole_stays_in_the_history_in_the_models_own_words() -> None:
    """The next prompt must start with exactly the tokens the model generated, so that llama.cpp reuses its
    KV cache instead of prefilling the previous reply again; the transcript keeps what was spoken."""
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or 9.0 <= t < 10.0, 20.0, llm_cls=MarkdownLLM)
    first, _ = rig.session.records
    assert first["assistant"] == "Sure! Here is one fun fact: the moon drifts away from us every year."
    second_prompt = rig.llm.prompts[-1]
    assert second_prompt[2].role == "assistant"
    assert second_prompt[2].content == "**Sure!**  Here is one *fun* fact: the moon drifts away from us every year."


def test_a_cut_reply_stays_in_the_history_as_heard() -> None:
    rig = run_timeline(lambda r, t: 0.2 <= t < 1.2 or after_play(r, 1, 0.6, 1.0, t), 12.0, llm_cls=MarkdownLLM)
    assistant = next(m for m in rig.llm.prompts[-1] if m.role == "assistant")
    assert "**" not in assistant.content and assistant.content.endswith("[interrupted by the user]")
