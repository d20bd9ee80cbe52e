"""Work started at the user's early pause, before the end of their turn is confirmed.

At the pause the audio so far is transcribed; once that transcript is in (and the user is still silent) the
reply is started on it too: the LLM streams into a reply pipeline, whose first clause is synthesised and
then waits, with the LLM, on its bounded queues. Nothing is played before the turn is confirmed and asks
exactly what the reply was prepared with (pipeline.turn, ReplyPipeline.adopt).

The `Speculator` owns that work from the pause until it is adopted by the turn or wasted, and counts both:
one object created early, then authorised or discarded (the shape of livekit's preemptive generation).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from voicecli.audio.format import Float32Array
from voicecli.engines.base import ChatMessage, LanguageModel, LLMStream, Transcript
from voicecli.errors import EngineError
from voicecli.pipeline.history import History
from voicecli.pipeline.metrics import TurnMetrics
from voicecli.pipeline.reply import Emit, ReplyPipeline, regeneration
from voicecli.pipeline.turn import TurnLifecycle
from voicecli.pipeline.turn_end import (
    BY_VAD,
    COMPLETE,
    FALLBACK,
    INCOMPLETE,
    Decision,
    Judge,
    Thresholds,
    by_probability,
    by_words,
)

JUDGE_MIN_S = 0.08  # the least time left in the hangover for the judge's verdict to still matter
# The least the pause waits for the tail partial (pipeline.prefill) before transcribing on its own as well: it
# started >= 80 ms before the pause and takes ~120 ms (whisper base, one thread, Xeon); a starved one must not hold
# it. Longer where the worker's own pace says so (Prefiller.due).
TAIL_WAIT_S = 0.15

# Why a prepared reply was thrown away (the `reply_wasted` event's reason, the keys of `Speculator.wasted`).
USER_WENT_ON = "the user went on talking"
PROMPT_CHANGED = "the prompt changed"
TURN_CANCELLED = "the turn was cancelled"
TURN_FAILED = "the turn ended before asking for it"
PREPARED_FAILED = "the prepared reply failed"


@dataclass
class Speculation:
    """The work of one pause: its transcript, and the reply prepared on it (if any)."""

    transcript: asyncio.Task[Transcript]
    lifecycle: TurnLifecycle
    t_pause: float = 0.0  # when the pause was signalled (the session's clock)
    prompt: list[ChatMessage] | None = None  # what the prepared reply was asked with
    llm_stream: LLMStream | None = None
    # The prepared reply running through chunker and TTS; its first clause's audio waits for the turn.
    reply: ReplyPipeline | None = None
    reply_task: asyncio.Task[bool] | None = None

    @property
    def usable(self) -> bool:
        return not self.transcript.cancelled()

    def cancel_reply(self) -> bool:
        """Stop the prepared reply; True if there was one."""
        if self.llm_stream is None:
            return False
        if self.reply_task is not None:
            self.reply_task.cancel()
        if self.reply is not None:
            self.reply.cancel()
        self.llm_stream.cancel()
        self.llm_stream, self.reply, self.reply_task = None, None, None
        return True


class Speculator:
    """Starts the work at a pause, holds it until the turn is confirmed, then hands it over or wastes it.

    `idle()`: no turn is in flight (a transcript that comes in later is of no use); `input_pending()`: the turn
    will ask with earlier words too, so a reply prepared on this transcript alone could never be adopted;
    `decided(decision, text, cost_s)`: the semantic end of turn's verdict on this pause (pipeline.turn_end), for the
    session to end the pause now, hold it open, or leave it to the VAD; `judge`: the LLM that scores the words."""

    def __init__(
        self,
        *,
        transcribe: Callable[[Float32Array], Coroutine[Any, Any, Transcript]],
        llm: LanguageModel,
        history: History,
        max_tokens: int,
        new_reply: Callable[[TurnLifecycle], ReplyPipeline],
        emit: Emit,
        clock: Callable[[], float],
        idle: Callable[[], bool],
        input_pending: Callable[[], bool],
        decided: Callable[[Decision, str, float], None],
        judge: Judge | None = None,
        prepare: bool = True,
        verdict_window_s: float = 0.3,
    ) -> None:
        self._transcribe = transcribe
        self._llm = llm
        self._history = history
        self._max_tokens = max_tokens
        self._new_reply = new_reply
        self._emit = emit
        self._clock = clock
        self._idle = idle
        self._input_pending = input_pending
        self._decided = decided
        self.judge = judge
        self._window_s = verdict_window_s  # from the pause to the end of the hangover: a verdict after it is moot
        self._prepare = prepare
        self.current: Speculation | None = None
        self._overdue: tuple[float, asyncio.Event] | None = None  # when the pause stops waiting for a tail partial
        self.adopted = 0  # prepared replies a turn took as its own
        self.wasted: Counter[str] = Counter()  # prepared replies thrown away, by reason

    # ---- the pause ----------------------------------------------------------------------------------------
    def start(
        self, audio: Float32Array, tail: asyncio.Future[Transcript] | None = None, due: float | None = None
    ) -> None:
        """The pause: transcribe `audio`, or take `tail`, the transcript of the same words started a little
        earlier on the partials' worker (Prefiller.covering), expected by `due` (Prefiller.handed_due)."""
        self.drop()
        now = self._clock()
        words = self._transcribe(audio) if tail is None else self._tail_or_own(tail, audio, now, due)
        spec = Speculation(asyncio.create_task(words), TurnLifecycle.proposed(now), t_pause=now)
        spec.transcript.add_done_callback(lambda _: self._transcribed(spec))
        self.current = spec

    async def _tail_or_own(
        self, tail: asyncio.Future[Transcript], audio: Float32Array, t_pause: float, due: float | None
    ) -> Transcript:
        """The tail partial's transcript; if it failed, or is not in by `due` nor TAIL_WAIT_S after the pause (a
        worker starved next to a busy program; `tick` tells), the pause's own transcription as well, and whichever
        comes first."""
        overdue = asyncio.Event()
        self._overdue = (max(t_pause + TAIL_WAIT_S, due or 0.0), overdue)
        waiting: asyncio.Future[Any] = asyncio.ensure_future(overdue.wait())
        try:
            await asyncio.wait({tail, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            self._overdue = None
        if tail.done() and not tail.cancelled() and tail.exception() is None:
            return tail.result()
        self._emit("tail_overdue")
        own = asyncio.ensure_future(self._transcribe(audio))
        try:
            pending: set[asyncio.Future[Transcript]] = {own} if tail.done() else {tail, own}
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if tail in done and not tail.cancelled() and tail.exception() is None:
                    return tail.result()
                if own in done:
                    return own.result()
        finally:
            own.cancel()

    def tick(self) -> None:
        """A frame went by: a tail partial the pause waits for may be overdue (see `_tail_or_own`)."""
        if self._overdue is not None and self._clock() >= self._overdue[0]:
            self._overdue[1].set()

    def _transcribed(self, spec: Speculation) -> None:
        """The speculative transcript is in and the user is still silent: the end of turn is judged on its words
        (unfinished words hold the pause open; the judge may end it now), and the reply is started on it (the
        judge, when it is the reply LLM, runs first on the same worker and leaves the prompt in its cache)."""
        task = spec.transcript
        if self.current is not spec or not self._idle() or task.cancelled() or task.exception():
            return
        text = task.result().text
        if not task.result().is_speech:
            return
        verdict = by_words(text)
        prompt = self._history.preview_user(text)
        if verdict is not None:
            if verdict.kind == COMPLETE:  # the reply first: the turn ends at once and adopts it (as in `_judged`)
                self._maybe_start_reply(spec, text, prompt)
            self._decided(verdict, text, self._clock() - spec.t_pause)
            return
        # A verdict takes ~20-100 ms (SmolLM2 with the words prefilled: 2-8 tokens): not worth asking (nor holding
        # the reply back for) when the transcription took nearly the whole hangover (whisper base on 2 cores).
        in_time = self._clock() - spec.t_pause < self._window_s - JUDGE_MIN_S
        judge = self.judge if in_time else None
        if judge is not None and (judge.shares_prompt or judge.beside_reply()):
            # The reply first. The reply LLM as the judge: the reply queues behind the verdict on its worker and
            # reuses its prefill. A judge of its own beside the reply: its verdict runs once the reply's first
            # clause is out, while Piper speaks it (engines.llm._Lane), instead of before the reply's prompt.
            self._maybe_start_reply(spec, text, prompt)
        asked = judge.ask(text, prompt) if judge is not None else None
        if asked is None:
            self._decided(Decision(FALLBACK, BY_VAD), text, 0.0)
            self._maybe_start_reply(spec, text, prompt)
            return
        t_asked = self._clock()
        asked.add_done_callback(lambda f: self._judged(spec, text, prompt, f, t_asked))

    def _judged(
        self,
        spec: Speculation,
        text: str,
        prompt: list[ChatMessage] | None,
        asked: asyncio.Future[float | None],
        t_asked: float,
    ) -> None:
        p = None if asked.cancelled() or asked.exception() is not None else asked.result()
        judge = self.judge
        verdict = by_probability(p, text, judge.thresholds if judge is not None else Thresholds())
        late = self.current is not spec or not self._idle()  # the hangover (or the user's next words) came first
        verdict = dataclasses.replace(verdict, late=late, judge_s=self._clock() - t_asked)
        # A judge of its own ran alone (two models decoding at once on 2 cores slow both): the reply starts now,
        # unless the user is not done, or it started before the verdict (Judge.beside_reply). Before the verdict is
        # handed on: a complete one ends the turn at once, and the turn adopts this reply.
        if not late and verdict.kind != INCOMPLETE and judge is not None and not judge.shares_prompt:
            self._maybe_start_reply(spec, text, prompt)
        self._decided(verdict, text, self._clock() - spec.t_pause)

    def _maybe_start_reply(self, spec: Speculation, text: str, prompt: list[ChatMessage] | None) -> None:
        if self._prepare and spec.llm_stream is None and not self._input_pending() and prompt is not None:
            self._start_reply(spec, text, prompt)

    def _start_reply(self, spec: Speculation, text: str, prompt: list[ChatMessage]) -> None:
        try:
            spec.llm_stream = self._llm.chat(prompt, max_tokens=self._max_tokens)
        except EngineError:
            return  # the turn's own request will report it
        spec.prompt = prompt
        spec.reply = self._new_reply(spec.lifecycle)
        regen = regeneration(self._llm, prompt, self._max_tokens)
        spec.reply_task = asyncio.create_task(spec.reply.run(spec.llm_stream, regen))
        self._emit("reply_prepared", text=text)

    # ---- the end of the turn ------------------------------------------------------------------------------
    def drop(self, reason: str = USER_WENT_ON) -> None:
        """The user went on talking (or the session ends): the current work is thrown away."""
        spec, self.current = self.current, None
        if spec is not None:
            spec.transcript.cancel()
            spec.lifecycle.cancel(reason, self._clock())
            self.release(spec, reason)

    def take(self) -> Speculation | None:
        """The turn is confirmed: it takes the current work (None if there is none)."""
        spec, self.current = self.current, None
        return spec

    def adopt(
        self, spec: Speculation | None, turn_id: int, metrics: TurnMetrics, messages: list[ChatMessage]
    ) -> tuple[ReplyPipeline, asyncio.Task[bool]] | None:
        """The prepared reply, if it was asked exactly what the turn asks: adopted as the turn's reply (its first
        clause may be synthesised already), which may play from now on. Returns (reply, its task) or None."""
        if spec is None or spec.llm_stream is None or spec.reply is None or spec.reply_task is None:
            return None
        if spec.prompt == messages and not spec.llm_stream.stats.cancelled and not spec.reply_task.done():
            self.adopted += 1
            metrics.reply_prepared = True
            spec.reply.adopt(turn_id, metrics)
            reply, task = spec.reply, spec.reply_task
            spec.llm_stream, spec.reply, spec.reply_task = None, None, None  # the turn's own from now on
            return reply, task
        task = spec.reply_task
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:  # a bug the user never hears of (the turn asks again): the log must show it
            self._emit("warning", turn_id=turn_id, message=f"the reply prepared at the pause failed ({error!r}); "
                       "the turn asks again")  # fmt: skip
        self.release(spec, PROMPT_CHANGED if error is None else PREPARED_FAILED, turn_id)
        return None

    def release(self, spec: Speculation | None, reason: str, turn_id: int = 0) -> None:
        """A prepared reply that will not be adopted: stopped, counted once, with why."""
        if spec is not None and spec.cancel_reply():
            self.wasted[reason] += 1
            self._emit("reply_wasted", turn_id=turn_id, reason=reason)
