"""The conversation's turn-taking: VAD events in, turns started, cut off (barge-in: STOP - DRAIN - RESET)
and finished.

The Session decides when a turn starts and ends; the rest is owned elsewhere:
* `pipeline.utterance`: what the user said that no turn has answered yet (monologue pieces, the input of a
  turn cut off by a barge-in, and the one rule for a barge-in whose sound is then discarded);
* `pipeline.speculation`: the work started at the pause, until the turn adopts it or it is wasted;
* `pipeline.interruption`: when speech during a turn is a barge-in;
* `pipeline.turn_runner`: one confirmed turn as a task (transcript -> history -> reply; an apology on failure);
* `pipeline.reply`: one spoken reply (LLM -> chunker -> guard -> TTS -> sink, one cancel);
* `pipeline.ledger`: what a turn leaves behind (history, transcript log, records, metric deltas).

Three "speaking" states, one per layer, and what each means:

    | state                        | whose            | it means                                             |
    |------------------------------|------------------|------------------------------------------------------|
    | `Session.State.SPEAKING`     | the conversation | the current turn's reply has queued audio (the UI)   |
    | `turn.Phase.SPEAKING`        | one turn         | that turn's first audio is queued; it may be cut     |
    | `vad.State.SPEECH`           | the microphone   | the *user* is talking (an onset, not yet silence)    |

`Session.State` is LISTENING (nothing said) -> HEARING (the user talks) -> THINKING (a turn is confirmed) ->
SPEAKING -> LISTENING; a barge-in goes back to HEARING. A turn's `Phase` runs PROPOSED (the pause) ->
CONFIRMED -> SPEAKING -> DONE / CANCELLED. The VAD's states are SILENCE / SPEECH / HANGOVER.

Threading model: everything here runs on the asyncio loop and is cheap; the engines keep their blocking
work behind their own executors. VAD -> STT: at most one utterance in flight per turn; a newer confirmed
utterance supersedes the older (barge-in), whose late result is discarded by turn id.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from voicecli.audio.format import Float32Array, rms_dbfs
from voicecli.config import TalkConfig, VadConfig
from voicecli.engines.base import LanguageModel, SpeechToText, TextToSpeech, Transcript
from voicecli.events import Event, EventKind
from voicecli.pipeline import vad
from voicecli.pipeline.history import History
from voicecli.pipeline.interruption import BargeInPolicy, Confirm
from voicecli.pipeline.ledger import TurnContext, TurnLedger
from voicecli.pipeline.metrics import LoopLagMonitor, TurnMetrics
from voicecli.pipeline.own_voice import TAIL_SECONDS, EchoReference
from voicecli.pipeline.ports import AudioSink, FrameLike, FrameSource
from voicecli.pipeline.prefill import Prefiller
from voicecli.pipeline.reply import APOLOGY, CONFUSED, ReplyPipeline, played_text
from voicecli.pipeline.speculation import PROMPT_CHANGED, TURN_CANCELLED, Speculator
from voicecli.pipeline.transcript import TranscriptLog
from voicecli.pipeline.turn import TurnLifecycle
from voicecli.pipeline.turn_end import COMPLETE, INCOMPLETE, Decision, Judge
from voicecli.pipeline.turn_runner import STT_APOLOGY, TurnRunner
from voicecli.pipeline.utterance import TurnInput, UtteranceAssembler

__all__ = ["APOLOGY", "CONFUSED", "STT_APOLOGY", "Session", "State", "played_text"]

MIC_LEVEL_EVERY = 5  # frames (100 ms) between mic level events


class State(enum.Enum):
    LISTENING = "listening"
    HEARING = "hearing"
    THINKING = "thinking"
    SPEAKING = "speaking"


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
        transcript: TranscriptLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        detector: vad.TurnDetector | None = None,
        capture_overruns: Callable[[], int] | None = None,
        playback_underruns: Callable[[], int] | None = None,
        streaming: bool = True,
        tap: Callable[[FrameLike], None] | None = None,
        barge_confirm: Confirm | None = None,
        echo_stats: Callable[[], dict[str, Any]] | None = None,
        judge: Judge | None = None,
        partial_stt: SpeechToText | None = None,
    ) -> None:
        """`streaming=False` is the naive baseline for the benchmark: no speculative STT, the whole reply
        is generated, then synthesised in one piece, then played. `barge_confirm` (echo mode): a second
        opinion on each barge-in (pipeline.bargein). `judge`: the LLM that tells from the words at a pause whether the
        user is done (pipeline.turn_end); without one, the VAD's hangover and the word rules decide. `partial_stt`: what
        transcribes the user's words while they speak (pipeline.prefill), a worker that gives way to the pause's
        own transcription; `stt` when None."""
        self.source = source
        self.sink = sink
        self.stt = stt
        self.tts = tts
        self._llm = llm
        self.talk_cfg = talk_cfg
        self._emit_cb = emit
        self.clock = clock
        self.detector = detector or vad.TurnDetector(vad_cfg)
        self.streaming = streaming
        self._tap = tap  # sees every mic frame (the benchmark locates the fed audio with it)
        self.state = State.LISTENING
        self.turns_started = 0
        self._turn: TurnContext | None = None
        self._last_task: asyncio.Task[None] | None = None
        self._next_turn_id = 1
        self._max_turns: int | None = None
        self._done = asyncio.Event()
        self._lag = LoopLagMonitor(clock=clock)
        self._frame_count = 0
        self._hangover_s = vad_cfg.hangover_ms / 1000.0
        self._barge = BargeInPolicy(talk_cfg.barge_in_min_ms, self._emit, barge_confirm)
        self._input = UtteranceAssembler(self._transcribe)
        # The words of the reply last heard on the speaker, while its echo may still start a turn (own_voice).
        self._echo_ref: EchoReference | None = None
        self._ended_early = False  # the current pause was ended by the judge, before the full hangover
        self.ledger = TurnLedger(
            history, self._emit, transcript=transcript, lag=self._lag, capture_overruns=capture_overruns,
            playback_underruns=playback_underruns, echo_stats=echo_stats,
        )  # fmt: skip

        def decided(verdict: Decision, text: str, cost_s: float) -> None:
            """The semantic end of turn's verdict on the current pause (pipeline.turn_end)."""
            ended: list[vad.Event] = []
            if not verdict.late and verdict.kind == INCOMPLETE:
                self.detector.wait_longer(
                    vad_cfg.thinking_extra_ms if verdict.thinking else vad_cfg.unfinished_extra_ms
                )
            elif not verdict.late and verdict.kind == COMPLETE:
                self._ended_early = True
                sooner = min(vad_cfg.hangover_ms, max(vad_cfg.pause_ms, vad_cfg.complete_min_ms))
                ended = self.detector.end_sooner(sooner, self.clock())
            self._emit(
                "end_of_turn", verdict=verdict.kind, by=verdict.by, p=verdict.p, late=verdict.late,
                thinking=verdict.thinking, cost_ms=round(cost_s * 1000.0, 1),
                judge_ms=round(verdict.judge_s * 1000.0, 1), text=text,
            )  # fmt: skip
            for ev in ended:  # the turn ends at the verdict, not on the next frame
                self._on_vad(ev)

        def may_prefill() -> bool:  # nothing else uses the LLM (pipeline.prefill)
            spec = self.speculator.current
            return self._turn is None and (spec is None or spec.llm_stream is None)

        self.prefiller = Prefiller(
            transcribe=self._transcribe if partial_stt is None else partial_stt.transcribe,
            llm=llm, history=history, emit=self._emit, may_prefill=may_prefill,
            freeze=getattr(partial_stt, "freeze", None), judge=judge,
            main=(self._transcribe, lambda: bool(getattr(stt, "idle", False))) if partial_stt is not None else None,
            keeps_up=lambda: bool(getattr(partial_stt, "keeps_up", True)), clock=clock,
        )  # fmt: skip
        self._prefill = streaming and talk_cfg.prefill_while_speaking and self.prefiller.enabled
        self.speculator = Speculator(
            transcribe=self._transcribe, llm=llm, history=history, max_tokens=max_tokens,
            new_reply=lambda lifecycle: self._new_reply(0, TurnMetrics(0), lifecycle), emit=self._emit,
            clock=clock, idle=lambda: self._turn is None, input_pending=lambda: self._input.pending, decided=decided,
            judge=judge, verdict_window_s=max(0.0, (vad_cfg.hangover_ms - vad_cfg.pause_ms) / 1000.0),
            prepare=talk_cfg.prepare_reply,
        )  # fmt: skip
        self._runner = TurnRunner(
            llm=llm, max_tokens=max_tokens, ledger=self.ledger, speculator=self.speculator, emit=self._emit,
            clock=clock, turn_over=self._turn_over,
        )  # fmt: skip

    # ---- what the benchmark and the app read ---------------------------------------------------------------
    @property
    def records(self) -> deque[dict[str, Any]]:
        return self.ledger.records

    @property
    def turns_answered(self) -> int:
        return self.ledger.turns_answered

    @property
    def replies_prepared(self) -> int:
        """Replies started during the hangover and used ..."""
        return self.speculator.adopted

    @property
    def replies_wasted(self) -> int:
        """... and thrown away (the reasons: `speculator.wasted`)."""
        return sum(self.speculator.wasted.values())

    # ---- events -------------------------------------------------------------------------------------------
    def _emit(self, kind: EventKind, t: float | None = None, turn_id: int = 0, **data: Any) -> None:
        if self._emit_cb is not None:
            self._emit_cb(Event(kind, self.clock() if t is None else t, turn_id, data))

    def _set_state(self, state: State, turn_id: int = 0) -> None:
        if state is not self.state:
            self.state = state
            self._lag.active(state is not State.LISTENING)  # no 20 ms timer while nothing happens (idle CPU)
            self._emit("state", turn_id=turn_id, state=state.value)

    # ---- main loop ----------------------------------------------------------------------------------------
    async def run(self, max_turns: int | None = None) -> None:
        """Converse until the source ends, `stop()` is called, or `max_turns` replies have been given."""
        self._max_turns = max_turns
        self._emit("session_start")
        self._emit("state", state=self.state.value)
        lag_task = asyncio.create_task(self._lag.run())
        try:
            async for frame in self.source.frames():
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
        self.speculator.drop("shutdown")
        self.prefiller.stop()
        self.prefiller.release()
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
        self.speculator.tick()
        listening = self._prefill and self._turn is None
        if listening and self.detector.just_quiet:
            self.prefiller.tail(self.detector.audio_so_far, self.detector.voiced_samples)
        elif listening and self.detector.state is vad.State.SPEECH and not self.detector.room_like:
            # (a frame like the room is not the user: a tail partial started on it still holds)
            self.prefiller.hearing(self.detector.speech_s, self.detector.last_voiced, self.detector.audio_so_far)
        if (
            self._input.monologue
            and self._turn is None
            and self.detector.state is vad.State.SILENCE
            and frame.t - self._input.cut_at >= self._hangover_s
        ):
            # The monologue was cut exactly where the user stopped: answer what was transcribed.
            cut_at = self._input.cut_at
            self._start_turn(self._input.take(None), speech_start=cut_at, speech_end=cut_at)
        if self._turn is not None and self._barge.ready(self.detector.speech_s, frame.t + 0.02):
            self._barge_in(decided=frame.t + 0.02)

    def _on_vad(self, ev: vad.Event) -> None:
        if isinstance(ev, vad.SpeechStarted):
            self._emit("speech_start", t=ev.t_onset)
            self._ended_early = False
            if self._turn is not None and self._went_on(self._turn, ev.t_onset):
                return
            if self._turn is not None:
                self._barge.speech_started(ev.t_onset)  # a barge-in once it lasts long enough
            else:
                self._set_state(State.HEARING)
        elif isinstance(ev, vad.Paused):
            self._emit("pause", t=ev.t)  # no new partial transcript; one in flight is frozen (pipeline.prefill)
            self.prefiller.hold(self.detector.voiced_samples)
            if self._turn is None and self.streaming:
                words = self.prefiller.covering(self.detector.voiced_samples)
                self.speculator.start(ev.audio, words, due=self.prefiller.handed_due)
        elif isinstance(ev, vad.Resumed):
            self._emit("resume", t=ev.t)
            self.speculator.drop()
        elif isinstance(ev, vad.Discarded):
            self.prefiller.stop()
            self._emit("discarded", t=ev.t, duration_s=ev.duration_s)
            self._discard(ev.t)
        elif isinstance(ev, vad.Utterance):
            self.prefiller.stop()
            self._on_utterance(ev)

    async def _transcribe(self, audio: Float32Array) -> Transcript:
        return await self.stt.transcribe(audio)

    # ---- turns --------------------------------------------------------------------------------------------
    def _on_utterance(self, ev: vad.Utterance) -> None:
        if ev.forced and self._turn is None:
            # Max length reached while the user is still talking: transcribe this piece now, answer later.
            self._emit("eou", t=ev.t_confirmed, forced=True, audio_s=len(ev.audio) / 16000.0)
            self.speculator.drop()
            self._input.add_piece(ev.audio, ev.t_speech_end)
            return
        if self._turn is not None and self._barge.is_user(ev.t_confirmed):
            self._barge_in(decided=self.clock())
        elif self._turn is not None or (self._barge.onset is not None and not self._barge.is_user(ev.t_confirmed)):
            # Speech during the reply too short to count as a barge-in (a cough), or not the user: the echo of
            # the reply, maybe of its last words after it ended, which must not become a turn.
            echo = self._barge.onset is not None
            reason: dict[str, Any] = {"reason": "not the user"} if echo and self._turn is None else {}
            self._emit("discarded", t=ev.t_confirmed, duration_s=ev.t_speech_end - ev.t_start, **reason)
            self._discard(ev.t_confirmed)
            return
        self._barge.clear()
        early, self._ended_early = self._ended_early, False
        self._start_turn(self._input.take(ev.audio), ev.t_start, ev.t_speech_end, forced=ev.forced)
        if early and self._turn is not None:
            self._turn.continues_until = ev.t_speech_end + self._hangover_s

    def _went_on(self, ctx: TurnContext, t_onset: float) -> bool:
        """Speech began before the full hangover of a turn the judge ended early: the user was not done after all
        (a sentence that could stand alone, then more). The reply is cut at once and their words are transcribed
        again together with what they say next (UtteranceAssembler.carry), as if the turn never ended."""
        if ctx.continues_until is None or t_onset >= ctx.continues_until:
            return False
        ctx.metrics.barge_in_onset = ctx.metrics.barge_in_decided = t_onset
        ctx.retracted = True
        self._cancel_turn(ctx, reason="went_on")
        self._input.carry(ctx.input, ctx.user_text, spoken=False)
        self._emit("barge_in", t=t_onset, turn_id=ctx.turn_id, onset=t_onset, during="went_on")
        self._set_state(State.HEARING)
        return True

    def _discard(self, t: float) -> None:
        """A sound that is no turn ended. If a barge-in on it cut a question off, that question is asked again."""
        self._barge.clear()
        self.speculator.drop()
        if self._turn is not None:
            return
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
        spec = self.speculator.take()
        used = spec if spec is not None and spec.usable and inp.speculation_fits else None
        if spec is not None and used is None:
            spec.transcript.cancel()  # earlier words lead the question: transcribed again with them
            self.speculator.release(spec, PROMPT_CHANGED, turn_id)
        # With a speculative transcript, the audio after the pause was silence: its result stands.
        stt = inp.transcript(self._transcribe, None if used is None else used.transcript)
        if stt is None:
            self._set_state(State.LISTENING)
            return
        lifecycle = TurnLifecycle.confirmed(now) if used is None else used.lifecycle
        if used is not None:
            lifecycle.confirm(now)
            m.stt_speculative = True
        ctx = TurnContext(turn_id, m, lifecycle, self._new_reply(turn_id, m, lifecycle), input=inp, spec=used)
        ref, self._echo_ref = self._echo_ref, None
        if ref is not None and ref.covers(speech_start):
            ctx.echo_ref = ref
        self._turn = ctx
        self.turns_started += 1
        ctx.task = asyncio.create_task(self._runner.run(ctx, stt, self._last_task))
        self._last_task = ctx.task
        self._set_state(State.THINKING, turn_id)

    def _barge_in(self, decided: float) -> None:
        ctx = self._turn
        if ctx is None:
            return
        ctx.metrics.barge_in_onset = self._barge.onset
        ctx.metrics.barge_in_decided = decided
        if ctx.reply.spoken_any:  # the speech that cut it may yet be its own echo: its words will tell
            self._echo_ref = EchoReference.around(ctx.reply.heard(False), ctx.reply.heard(True), until=decided)
        self._cancel_turn(ctx, reason="barge_in")
        during = "speaking" if ctx.reply.spoken_any else "thinking"
        self._emit("barge_in", t=decided, turn_id=ctx.turn_id, onset=ctx.metrics.barge_in_onset, during=during,
                   **self._barge.decided())  # fmt: skip
        self._set_state(State.HEARING)

    def _cancel_turn(self, ctx: TurnContext, reason: str) -> None:
        """STOP (cancel the task, stop the LLM) and DRAIN (flush playback) now; the task's own cleanup does
        RESET (history keeps what was played)."""
        ctx.interrupted = True
        ctx.lifecycle.cancel(reason, self.clock())
        ctx.reply.cancel()
        self.speculator.release(ctx.spec, TURN_CANCELLED, ctx.turn_id)  # a prepared reply not yet taken
        if ctx.task is not None:
            ctx.task.cancel()
        if reason == "barge_in":
            # Their words join the next utterance, or are asked again if the barge-in was a false alarm.
            self._input.carry(ctx.input, ctx.user_text, spoken=ctx.reply.spoken_any)
        if self._turn is ctx:
            self._turn = None

    def _new_reply(self, turn_id: int, metrics: TurnMetrics, lifecycle: TurnLifecycle) -> ReplyPipeline:
        def speaking(turn_id: int) -> None:
            if self._turn is not None and self._turn.turn_id == turn_id:
                self._set_state(State.SPEAKING, turn_id)

        return ReplyPipeline(
            turn_id=turn_id, metrics=metrics, lifecycle=lifecycle, sink=self.sink, tts=self.tts, emit=self._emit,
            clock=self.clock, max_reply_words=self.talk_cfg.max_reply_words,
            first_soft_words=self.talk_cfg.first_clause_soft_words, streaming=self.streaming, on_speaking=speaking,
        )  # fmt: skip

    def _turn_over(self, ctx: TurnContext, answered: bool) -> None:
        if ctx.reply.spoken_any and not ctx.interrupted:  # its echo tail may still start a turn
            full = ctx.reply.heard(False)
            end = ctx.metrics.play_end if ctx.metrics.play_end is not None else self.clock()
            self._echo_ref = EchoReference.around(full, full, until=end + TAIL_SECONDS)
        if answered and self._max_turns is not None and self.turns_answered >= self._max_turns:
            self._done.set()
        if self._turn is ctx:
            self._turn = None
            self._set_state(State.LISTENING)
            self._prefill_next()

    def _prefill_next(self) -> None:
        """Nothing in flight: the local LLM caches the conversation so far up to the next user message's opening
        (LlamaLLM.prefill_next), so the next pause leaves only the user's words to evaluate."""
        prefill = getattr(self._llm, "prefill_next", None)
        spec = self.speculator.current
        if self.streaming and callable(prefill) and (spec is None or spec.llm_stream is None):
            prefill(self.ledger.history.messages())
