"""The conversation: VAD turn-taking -> (speculative) STT -> the reply pipeline, with barge-in
(STOP - DRAIN - RESET).

The parts: `pipeline.turn` is each turn's lifecycle (proposed at the pause -> confirmed -> speaking -> done
or cancelled), `pipeline.speculation` the work started at the pause, `pipeline.reply` the reply pipeline
(LLM -> chunker -> guard -> TTS -> sink, one cancel). The Session wires them to the VAD's events and keeps
the books (history, transcript, events, per-turn metrics).

Threading model: everything here runs on the asyncio loop and is cheap; the engines keep their blocking
work behind their own executors. A barge-in cancels the turn's task, stops the LLM, flushes playback, and
the history keeps only what the user actually heard.

VAD -> STT: at most one utterance in flight per turn; a newer confirmed utterance supersedes the older
(barge-in), whose late result is discarded by turn id. The reply's own queues: see pipeline.reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import rms_dbfs
from voicecli.config import TalkConfig, VadConfig
from voicecli.engines.base import ChatMessage, LanguageModel, SpeechToText, TextToSpeech, Transcript
from voicecli.errors import EngineError
from voicecli.events import Event, EventKind
from voicecli.pipeline import vad
from voicecli.pipeline.endpoint import sounds_unfinished
from voicecli.pipeline.history import History
from voicecli.pipeline.metrics import LoopLagMonitor, TurnMetrics
from voicecli.pipeline.ports import AudioSink, FrameLike, FrameSource
from voicecli.pipeline.reply import APOLOGY, CONFUSED, ReplyPipeline, played_text
from voicecli.pipeline.speculation import Speculation
from voicecli.pipeline.transcript import Transcript as TranscriptFile
from voicecli.pipeline.turn import TurnLifecycle
from voicecli.pipeline.utterance import TurnInput, UtteranceAssembler, joined

__all__ = ["APOLOGY", "CONFUSED", "STT_APOLOGY", "Session", "State", "played_text"]

RECORDS_KEPT = 200
STT_APOLOGY = "Sorry, I could not make out what you said. Please say it again."
MIC_LEVEL_EVERY = 5  # frames (100 ms) between mic level events


class State(enum.Enum):
    LISTENING = "listening"
    HEARING = "hearing"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass
class TurnContext:
    turn_id: int
    metrics: TurnMetrics
    lifecycle: TurnLifecycle
    reply: ReplyPipeline
    task: asyncio.Task[None] | None = None
    input: TurnInput = field(default_factory=TurnInput)
    user_text: str = ""
    user_added: bool = False
    interrupted: bool = False
    error: str = ""  # an engine failed this turn (the message the user was shown)
    spec: Speculation | None = None  # the speculation this turn's transcript came from


class Session:
    def __init__(
        self,
        *,
        source: FrameSource,
        sink: AudioSink,
        stt: SpeechToText,
        llm: LanguageModel,
        tts: TextToSpeech,
        history: History,
        vad_cfg: VadConfig,
        talk_cfg: TalkConfig,
        max_tokens: int = 200,
        emit: Callable[[Event], None] | None = None,
        transcript: TranscriptFile | None = None,
        clock: Callable[[], float] = time.monotonic,
        detector: vad.TurnDetector | None = None,
        capture_overruns: Callable[[], int] | None = None,
        playback_underruns: Callable[[], int] | None = None,
        streaming: bool = True,
        tap: Callable[[FrameLike], None] | None = None,
        barge_confirm: Callable[[float, float], Any] | None = None,
        echo_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """`streaming=False` is the naive baseline for the benchmark: no speculative STT, the whole reply
        is generated, then synthesised in one piece, then played."""
        self.source = source
        self.sink = sink
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.history = history
        self.talk_cfg = talk_cfg
        self.max_tokens = max_tokens
        self._emit_cb = emit
        self.transcript = transcript
        self.clock = clock
        self.detector = detector or vad.TurnDetector(vad_cfg)
        self._capture_overruns = capture_overruns
        self._playback_underruns = playback_underruns  # running total; only counts inside replies
        self._underruns_seen = 0
        self.streaming = streaming
        self._tap = tap  # sees every mic frame (the benchmark locates the fed audio with it)
        # Echo mode: (onset, now) -> a verdict with `.confirmed`; a barge-in waits for it (pipeline.bargein).
        self._barge_confirm = barge_confirm
        self._barge_doubted = False
        self._verdict: Any = None  # the confirming verdict of the barge-in being decided (echo mode)
        self._echo_stats = echo_stats  # per-turn echo figures merged into the turn's timings
        self.state = State.LISTENING
        self.turns_answered = 0
        self.turns_started = 0
        self.replies_prepared = 0  # replies started during the hangover and used
        self.replies_wasted = 0  # ... and thrown away (the user went on talking)
        # The latest transcript records (the file keeps them all): bounded, so a long session's memory is too.
        self.records: deque[dict[str, Any]] = deque(maxlen=RECORDS_KEPT)
        self._turn: TurnContext | None = None
        self._last_task: asyncio.Task[None] | None = None
        self._spec: Speculation | None = None
        self._barge_onset: float | None = None
        self._next_turn_id = 1
        self._max_turns: int | None = None
        self._done = asyncio.Event()
        self._lag = LoopLagMonitor(clock=clock)
        self._frame_count = 0
        self._overruns_seen = 0
        # Monologue pieces and the input of turns cut off by a barge-in, until a turn answers them.
        self._input = UtteranceAssembler(self._transcribe)
        self._hangover_s = vad_cfg.hangover_ms / 1000.0
        self._unfinished_extra_ms = vad_cfg.unfinished_extra_ms

    # ---- events -------------------------------------------------------------------------------------------
    def _emit(self, kind: EventKind, t: float | None = None, turn_id: int = 0, **data: Any) -> None:
        if self._emit_cb is not None:
            self._emit_cb(Event(kind, self.clock() if t is None else t, turn_id, data))

    def _set_state(self, state: State, turn_id: int = 0) -> None:
        if state is not self.state:
            self.state = state
            self._emit("state", turn_id=turn_id, state=state.value)

    # ---- main loop ----------------------------------------------------------------------------------------
    async def run(self, max_turns: int | None = None) -> None:
        """Converse until the source ends, `stop()` is called, or `max_turns` replies have been given."""
        self._max_turns = max_turns
        self._emit("session_start")
        self._emit("state", state=self.state.value)
        lag_task = asyncio.create_task(self._lag.run())
        try:
            frames = self.source.frames()
            async for frame in frames:
                self.on_frame(frame)
                if self._done.is_set():
                    break
            # The source ended (a file or a test): let the turn in flight finish.
            if not self._done.is_set() and self._last_task is not None:
                await asyncio.wait([self._last_task])
        finally:
            await self._shutdown()
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task
            self._emit("session_end", answered=self.turns_answered, loop_lag_max=self._lag.worst_ever)

    def stop(self) -> None:
        self._done.set()

    async def _shutdown(self) -> None:
        if self._turn is not None:
            self._cancel_turn(self._turn, reason="shutdown")
        if self._spec is not None:
            self._spec.cancel("shutdown", self.clock())
        self._input.clear()
        if self._last_task is not None:
            await asyncio.wait([self._last_task], timeout=1.0)

    def on_frame(self, frame: FrameLike) -> None:
        """Feed one 20 ms frame. Cheap and synchronous: the turn work happens in tasks."""
        self._frame_count += 1
        if self._tap is not None:
            self._tap(frame)
        if self._frame_count % MIC_LEVEL_EVERY == 0 and self._emit_cb is not None:
            self._emit("mic_level", t=frame.t, dbfs=round(rms_dbfs(frame.pcm), 1))
        if self._turn is not None and not self.talk_cfg.barge_in:
            # Half duplex: the mic is ignored while the assistant is busy, so its own voice cannot trigger it.
            self.detector.reset()
            return
        for ev in self.detector.process(frame.pcm, frame.t):
            self._on_vad(ev)
        if (
            self._input.monologue
            and self._turn is None
            and self.detector.state is vad.State.SILENCE
            and frame.t - self._input.cut_at >= self._hangover_s
        ):
            # The monologue was cut exactly where the user stopped: answer what was transcribed.
            cut_at = self._input.cut_at
            self._start_turn(self._input.take(None), speech_start=cut_at, speech_end=cut_at)
        if self._barge_onset is not None and self._turn is not None and self._barge_ready(frame.t + 0.02):
            self._barge_in(decided=frame.t + 0.02)

    def _barge_ready(self, now: float) -> bool:
        """Whether the speech heard during a turn is a barge-in yet.

        Without a second opinion: once it lasts barge_in_min_ms. With one (`--echo aec`), the verdict on the
        cleaned audio decides and half of barge_in_min_ms is enough: the neural VAD already rejects clicks
        and coughs, and the canceller trims the tail of a short word ("Stop,") below the full minimum. Until
        the verdict agrees the reply keeps playing (nothing is flushed); it is asked again every frame."""
        assert self._barge_onset is not None
        long_ms = self.detector.speech_s * 1000.0
        if self._barge_confirm is None:
            return long_ms >= self.talk_cfg.barge_in_min_ms
        if long_ms < self.talk_cfg.barge_in_min_ms / 2:
            return False
        verdict = self._barge_confirm(self._barge_onset, now)
        if not verdict.confirmed and long_ms >= self.talk_cfg.barge_in_min_ms and not self._barge_doubted:
            self._barge_doubted = True  # the VAD alone would have cut the reply here
            self._emit("discarded", t=now, reason="not the user", **_verdict_fields(verdict))
        if verdict.confirmed:
            self._verdict = verdict
        return bool(verdict.confirmed)

    def _on_vad(self, ev: vad.Event) -> None:
        if isinstance(ev, vad.SpeechStarted):
            self._emit("speech_start", t=ev.t_onset)
            if self._turn is not None:
                self._barge_onset = ev.t_onset  # confirmed once it lasts barge_in_min_ms
                self._barge_doubted = False
            else:
                self._set_state(State.HEARING)
        elif isinstance(ev, vad.Paused):
            self._emit("pause", t=ev.t)
            if self._turn is None and self.streaming:
                self._start_speculation(ev.audio)
        elif isinstance(ev, vad.Resumed):
            self._emit("resume", t=ev.t)
            self._drop_speculation()
        elif isinstance(ev, vad.Discarded):
            self._emit("discarded", t=ev.t, duration_s=ev.duration_s)
            self._barge_onset = None
            self._drop_speculation()
            if self._turn is None:
                self._sound_discarded(ev.t)
        elif isinstance(ev, vad.Utterance):
            self._on_utterance(ev)

    # ---- speculation --------------------------------------------------------------------------------------
    def _start_speculation(self, audio: npt.NDArray[np.float32]) -> None:
        self._drop_speculation()
        spec = Speculation(
            len(audio), asyncio.create_task(self._transcribe(audio)), TurnLifecycle.proposed(self.clock())
        )
        spec.task.add_done_callback(lambda _: self._on_spec_transcript(spec))
        self._spec = spec

    def _on_spec_transcript(self, spec: Speculation) -> None:
        """The speculative transcript is in and the user is still silent: an unfinished sentence holds the turn
        open longer; otherwise the reply is started now (pipeline.endpoint, talk.prepare_reply)."""
        if self._spec is not spec or self._turn is not None or spec.task.cancelled() or spec.task.exception():
            return
        tr = spec.task.result()
        if not tr.is_speech:
            return
        if sounds_unfinished(tr.text):
            self.detector.wait_longer(self._unfinished_extra_ms)
            self._emit("turn_held", text=tr.text, extra_ms=self._unfinished_extra_ms)
            return
        if self.talk_cfg.prepare_reply:
            self._prepare_reply(spec, tr.text)

    def _prepare_reply(self, spec: Speculation, text: str) -> None:
        if self._input.pending:  # the turn will ask with earlier words too: this reply could never be used
            return
        prompt = self.history.preview_user(text)
        if prompt is None:  # the history will be trimmed first: the turn asks itself
            return
        try:
            spec.reply = self.llm.chat(prompt, max_tokens=self.max_tokens)
        except EngineError:
            return  # the turn's own request will report it
        spec.prompt = prompt
        spec.pipeline = self._new_reply(0, TurnMetrics(0), spec.lifecycle)
        spec.running = asyncio.create_task(spec.pipeline.run(spec.reply))
        self._emit("reply_prepared", text=text)

    def _drop_speculation(self, spec: Speculation | None = None) -> None:
        spec = spec or self._spec
        if spec is not None:
            if spec.cancel("the user went on talking", self.clock()):
                self.replies_wasted += 1
                self._emit("reply_wasted", reason="the user went on talking")
            if spec is self._spec:
                self._spec = None

    def _take_prepared(self, ctx: TurnContext, messages: list[ChatMessage]) -> asyncio.Task[bool] | None:
        """The reply prepared during the hangover, if it was asked exactly what this turn asks: it becomes
        the turn's reply (its first clause may be synthesised already) and may play from now on."""
        spec, ctx.spec = ctx.spec, None
        if spec is None or spec.reply is None or spec.pipeline is None or spec.running is None:
            return None
        if spec.prompt == messages and not spec.reply.stats.cancelled and not spec.running.done():
            self.replies_prepared += 1
            ctx.metrics.reply_prepared = True
            ctx.reply = spec.pipeline
            ctx.reply.adopt(ctx.turn_id, ctx.metrics)
            return spec.running
        spec.drop_reply()
        self.replies_wasted += 1
        self._emit("reply_wasted", turn_id=ctx.turn_id, reason="the prompt changed")
        return None

    async def _transcribe(self, audio: npt.NDArray[np.float32]) -> Transcript:
        return await self.stt.transcribe(audio)

    # ---- turns --------------------------------------------------------------------------------------------
    def _on_utterance(self, ev: vad.Utterance) -> None:
        if ev.forced and self._turn is None:
            # Max length reached while the user is still talking: transcribe this chunk now, answer later.
            self._emit("eou", t=ev.t_confirmed, forced=True, audio_s=len(ev.audio) / 16000.0)
            self._drop_speculation()
            self._input.add_piece(ev.audio, ev.t_speech_end)
            return
        now = self.clock()
        if self._turn is not None:
            if self._barge_onset is None or (
                self._barge_confirm is not None and not self._barge_confirm(self._barge_onset, ev.t_confirmed).confirmed
            ):
                # Speech during the reply too short to count as a barge-in (a cough), or not the user
                # (the echo of the reply): keep talking.
                self._emit("discarded", t=ev.t_confirmed, duration_s=ev.t_speech_end - ev.t_start)
                self._barge_onset = None
                self._drop_speculation()
                return
            self._barge_in(decided=now)
        elif (
            self._barge_onset is not None
            and self._barge_confirm is not None
            and not self._barge_confirm(self._barge_onset, ev.t_confirmed).confirmed
        ):
            # Began during a reply that has ended since and never looked like the user: the tail of the
            # reply's own echo must not become a turn.
            self._emit("discarded", t=ev.t_confirmed, reason="not the user", duration_s=ev.t_speech_end - ev.t_start)
            self._barge_onset = None
            self._drop_speculation()
            self._sound_discarded(ev.t_confirmed)
            return
        self._barge_onset = None
        self._start_turn(self._input.take(ev.audio), ev.t_start, ev.t_speech_end, forced=ev.forced)

    def _sound_discarded(self, t: float) -> None:
        """A sound that was no turn ended: the question a barge-in on it cut off is asked again now."""
        cut = self._input.sound_discarded()
        if cut is None:
            self._set_state(State.LISTENING)
        else:
            self._emit("turn_resumed", t=t, text=cut.text or "")
            self._start_turn(cut, speech_start=t, speech_end=t)

    def _start_turn(self, inp: TurnInput, speech_start: float, speech_end: float, forced: bool = False) -> None:
        now = self.clock()
        turn_id = self._next_turn_id
        self._next_turn_id += 1
        m = TurnMetrics(turn_id, speech_start=speech_start, speech_end=speech_end, eou=now)
        self._emit("speech_end", t=speech_end, turn_id=turn_id)
        self._emit("eou", t=now, turn_id=turn_id, forced=forced, audio_s=inp.audio_s)
        spec = self._spec
        self._spec = None
        stt_task: Awaitable[Transcript] | None = None
        used: Speculation | None = None
        if inp.text is not None:
            stt_task = _known(inp)  # asked again: its transcript is in already
            lifecycle = TurnLifecycle.confirmed(now)
        elif spec is not None and not inp.joined_carry and not spec.task.cancelled() and len(inp.audio):
            stt_task = spec.task  # the audio after the pause was silence: the speculative result stands
            m.stt_speculative = True
            used = spec
            lifecycle = spec.lifecycle
            lifecycle.confirm(now)
        else:
            lifecycle = TurnLifecycle.confirmed(now)
            if len(inp.audio):
                stt_task = asyncio.create_task(self._transcribe(inp.audio))
        if spec is not None and used is None:
            self._drop_speculation(spec)
        if inp.pieces and inp.text is None:
            stt_task = joined(inp.pieces, stt_task)
        if stt_task is None:
            self._set_state(State.LISTENING)
            return
        ctx = TurnContext(turn_id, m, lifecycle, self._new_reply(turn_id, m, lifecycle), input=inp, spec=used)
        self._turn = ctx
        self.turns_started += 1
        prev = self._last_task
        ctx.task = asyncio.create_task(self._run_turn(ctx, stt_task, prev))
        self._last_task = ctx.task
        self._set_state(State.THINKING, turn_id)

    def _barge_in(self, decided: float) -> None:
        ctx = self._turn
        if ctx is None:
            return
        ctx.metrics.barge_in_onset = self._barge_onset
        ctx.metrics.barge_in_decided = decided
        self._cancel_turn(ctx, reason="barge_in")
        self._barge_onset = None
        self._emit(
            "barge_in",
            t=decided,
            turn_id=ctx.turn_id,
            onset=ctx.metrics.barge_in_onset,
            during="speaking" if ctx.reply.spoken_any else "thinking",
            **({} if self._verdict is None else _verdict_fields(self._verdict)),
        )
        self._verdict = None
        self._set_state(State.HEARING)

    def _cancel_turn(self, ctx: TurnContext, reason: str) -> None:
        """STOP (cancel the task, stop the LLM) and DRAIN (flush playback) now; the task's own cleanup does
        RESET (history keeps what was played)."""
        ctx.interrupted = True
        ctx.lifecycle.cancel(reason, self.clock())
        ctx.reply.cancel()
        if ctx.spec is not None:  # a prepared reply not yet taken
            ctx.spec.drop_reply()
        if ctx.task is not None:
            ctx.task.cancel()
        if reason == "barge_in":
            # Their words join the next utterance, or are asked again if the barge-in was a false alarm.
            self._input.carry(ctx.input, ctx.user_text, spoken=ctx.reply.spoken_any)
        if self._turn is ctx:
            self._turn = None

    async def _run_turn(
        self,
        ctx: TurnContext,
        stt_task: Awaitable[Transcript],
        prev: asyncio.Task[None] | None,
    ) -> None:
        m = ctx.metrics
        answered = False
        try:
            if prev is not None and not prev.done():
                await asyncio.wait([prev])  # the previous turn's RESET lands in the history first
            if ctx.input.resumes:
                self.history.retract_turn()  # the cut answer gives way to the whole one
            tr = await stt_task
            m.stt_done = self.clock()
            m.stt_compute_s = tr.compute_s
            self._emit(
                "stt_done",
                turn_id=ctx.turn_id,
                text=tr.text,
                is_speech=tr.is_speech,
                compute_s=tr.compute_s,
                queue_wait_s=tr.queue_wait_s,  # waiting for the STT worker (behind another utterance)
                window_s=tr.window_s,
                speculative=m.stt_speculative,
            )
            if not tr.is_speech:
                self._emit("stt_rejected", turn_id=ctx.turn_id, text=tr.text)
                return
            ctx.user_text = tr.text
            dropped_before = self.history.truncated_turns
            self.history.add_user(ctx.user_text)
            ctx.user_added = True
            if self.history.last_user_truncated:
                self._emit("warning", turn_id=ctx.turn_id,
                           message="what you said is longer than the model's context: only its end was kept "
                           "(raise llm.history_tokens / llm.n_ctx for longer input)")  # fmt: skip
            if self.history.truncated_turns > dropped_before:
                self._emit("warning", turn_id=ctx.turn_id,
                           message=f"the conversation outgrew llm.history_tokens: the oldest "
                           f"{self.history.truncated_turns} turns are no longer sent to the model")  # fmt: skip
            answered = await self._reply(ctx)
        except asyncio.CancelledError:
            ctx.interrupted = True
        except Exception as exc:
            # STT failed (timeout, a worker that died twice), the LLM refused to start, or a bug: say so out
            # loud, record it, and keep listening; never end the turn silently.
            answered = await self._apologise(ctx, exc)
        finally:
            try:
                self._finish_turn(ctx, answered)
            except Exception as exc:  # e.g. the transcript's disk is full: the session must go on
                self._emit("error", turn_id=ctx.turn_id, message=f"could not record the turn: {exc}")
                if self._turn is ctx:
                    self._turn = None
                    self._set_state(State.LISTENING)

    async def _apologise(self, ctx: TurnContext, exc: Exception) -> bool:
        if isinstance(exc, EngineError):
            ctx.error, hint, trace = exc.message, exc.hint, ""
        else:
            ctx.error, hint = f"unexpected {type(exc).__name__}: {exc}", "this is a bug: please report it"
            trace = "".join(traceback.format_exception(exc))
        extra: dict[str, Any] = {"traceback": trace} if trace else {}
        self._emit("error", turn_id=ctx.turn_id, message=ctx.error, hint=hint, **extra)
        try:
            return await ctx.reply.say(APOLOGY if ctx.user_added else STT_APOLOGY)
        except asyncio.CancelledError:
            ctx.interrupted = True
        except Exception as again:  # the speaker itself is broken: the turn still ends, and says why
            self._emit("error", turn_id=ctx.turn_id, message=f"could not apologise: {again!r}")
        return False

    def _new_reply(self, turn_id: int, metrics: TurnMetrics, lifecycle: TurnLifecycle) -> ReplyPipeline:
        def speaking(turn_id: int) -> None:
            if self._turn is not None and self._turn.turn_id == turn_id:
                self._set_state(State.SPEAKING, turn_id)

        return ReplyPipeline(
            turn_id=turn_id,
            metrics=metrics,
            lifecycle=lifecycle,
            sink=self.sink,
            tts=self.tts,
            emit=self._emit,
            clock=self.clock,
            max_reply_words=self.talk_cfg.max_reply_words,
            first_soft_words=self.talk_cfg.first_clause_soft_words,
            streaming=self.streaming,
            on_speaking=speaking,
        )

    async def _reply(self, ctx: TurnContext) -> bool:
        messages = self.history.messages()
        prepared = self._take_prepared(ctx, messages)
        if prepared is not None:
            return await prepared
        return await ctx.reply.run(self.llm.chat(messages, max_tokens=self.max_tokens))

    def _finish_turn(self, ctx: TurnContext, answered: bool) -> None:
        """RESET and bookkeeping; synchronous so it also runs fully inside a cancelled task."""
        m, reply = ctx.metrics, ctx.reply
        if reply.stream is not None and not answered:
            reply.stream.cancel()
        if ctx.spec is not None and ctx.spec.drop_reply():  # prepared, never taken (e.g. STT failed)
            self.replies_wasted += 1
        if ctx.interrupted:
            ctx.lifecycle.cancel("cancelled", self.clock())  # a no-op when the barge-in already did
        else:
            ctx.lifecycle.finish(self.clock())
        m.play_start = reply.play_start()
        if m.play_start is not None:
            self._emit("play_start", t=m.play_start, turn_id=ctx.turn_id)
        cut_off = reply.device_lost()
        heard = reply.heard(cut_short=ctx.interrupted or cut_off)
        if ctx.user_added:
            if reply.spoken_any or not ctx.interrupted:
                kept = reply.history_text(cut_short=ctx.interrupted or cut_off)
                self.history.add_assistant(kept, interrupted=ctx.interrupted)
            else:
                # Cut off before a word was played: the user's words are re-sent with their next ones.
                self.history.retract_user()
        m.interrupted = ctx.interrupted
        m.loop_lag_max_s = self._lag.take()
        if self._playback_underruns is not None:
            total = self._playback_underruns()
            m.underruns, self._underruns_seen = total - self._underruns_seen, total
        if self._capture_overruns is not None:
            total = self._capture_overruns()
            m.overruns, self._overruns_seen = total - self._overruns_seen, total
        summary = m.summary()
        if self._echo_stats is not None:
            summary.update(self._echo_stats())
        record: dict[str, Any] = {
            "turn": ctx.turn_id,
            "time": time.time(),
            "user": ctx.user_text,
            "assistant": heard,
            "interrupted": ctx.interrupted,
            "speaker_lost": cut_off,
            "answered": answered,
            "timings": summary,
        }
        if ctx.error:
            record["error"] = ctx.error
        if (ctx.user_added and (reply.spoken_any or not ctx.interrupted)) or ctx.error:
            self.records.append(record)
            if self.transcript is not None:
                self.transcript.append(record)
        self._emit("turn_end", None, ctx.turn_id, **record)
        if answered or reply.spoken_any:  # a reply cut off by the user was still an answer
            self.turns_answered += 1
            if self._max_turns is not None and self.turns_answered >= self._max_turns:
                self._done.set()
        if self._turn is ctx:
            self._turn = None
            self._set_state(State.LISTENING)


async def _known(inp: TurnInput) -> Transcript:
    return Transcript(text=inp.text or "", is_speech=True, audio_s=inp.audio_s)


def _verdict_fields(verdict: Any) -> dict[str, Any]:
    """A barge-in verdict's evidence for the event log (see pipeline.bargein.Verdict)."""
    r = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {
        "speech_ratio": r(verdict.speech_ratio),
        "level_dbfs": r(verdict.level_dbfs),
        "background_dbfs": r(verdict.background_dbfs),
        "retained_db": r(verdict.retained_db),
        "excess_db": r(verdict.excess_db),
    }
