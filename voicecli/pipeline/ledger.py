"""What each turn leaves behind: the history (what the user said, what they heard of the reply), the
transcript log, the latest records, and the turn's share of the running counters (underruns, overruns,
loop lag, echo figures).

`TurnContext` is one turn as the session runs it and the ledger records it. Everything here is synchronous
and cheap, so it also runs fully inside a cancelled task.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voicecli.pipeline.history import History
from voicecli.pipeline.metrics import LoopLagMonitor, TurnMetrics
from voicecli.pipeline.own_voice import EchoReference
from voicecli.pipeline.reply import Emit, ReplyPipeline
from voicecli.pipeline.speculation import Speculation
from voicecli.pipeline.transcript import TranscriptLog
from voicecli.pipeline.turn import TurnLifecycle
from voicecli.pipeline.utterance import TurnInput

RECORDS_KEPT = 200


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
    error: str = ""  # the turn failed (the message the user was shown)
    spec: Speculation | None = None  # the work of the pause this turn's transcript came from
    echo_ref: EchoReference | None = None  # began while a reply played or just after: words it may echo
    # Ended early by the semantic end of turn: speech that starts before this moment (the speech end plus the
    # full hangover, seconds) is the user going on, not a barge-in (Session._went_on).
    continues_until: float | None = None
    retracted: bool = False  # the user went on talking: this turn is undone, its words asked again with theirs


class _Delta:
    """The growth of a running total since the previous turn."""

    def __init__(self, total: Callable[[], int] | None) -> None:
        self._total = total
        self._seen = 0

    def take(self) -> int:
        if self._total is None:
            return 0
        total = self._total()
        delta, self._seen = total - self._seen, total
        return delta


class TurnLedger:
    def __init__(
        self,
        history: History,
        emit: Emit,
        *,
        transcript: TranscriptLog | None = None,
        lag: LoopLagMonitor | None = None,
        capture_overruns: Callable[[], int] | None = None,
        playback_underruns: Callable[[], int] | None = None,
        echo_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.history = history
        self._emit = emit
        self.transcript = transcript
        self._lag = lag
        self._overruns = _Delta(capture_overruns)
        self._underruns = _Delta(playback_underruns)  # running total; only counts inside replies
        self._echo_stats = echo_stats
        # The latest records (the log keeps them all): bounded, so a long session's memory is too.
        self.records: deque[dict[str, Any]] = deque(maxlen=RECORDS_KEPT)
        self.turns_answered = 0

    def question(self, ctx: TurnContext, text: str) -> None:
        """The user's words start the turn in the history; warn when the budget cut them or older turns."""
        if ctx.input.resumes:
            self.history.retract_turn()  # the cut answer gives way to the whole one
        ctx.user_text = text
        dropped_before = self.history.truncated_turns
        self.history.add_user(text)
        ctx.user_added = True
        if self.history.last_user_truncated:
            self._emit("warning", turn_id=ctx.turn_id,
                       message="what you said is longer than the model's context: only its end was kept "
                       "(raise llm.history_tokens / llm.n_ctx for longer input)")  # fmt: skip
        if self.history.truncated_turns > dropped_before:
            self._emit("warning", turn_id=ctx.turn_id,
                       message=f"the conversation outgrew llm.history_tokens: the oldest "
                       f"{self.history.truncated_turns} turns are no longer sent to the model")  # fmt: skip

    def finish(self, ctx: TurnContext, answered: bool) -> bool:
        """RESET: the history keeps what was played; the turn's record is kept and logged. True when the turn
        counts as answered (a reply cut off by the user was still an answer)."""
        m, reply = ctx.metrics, ctx.reply
        m.play_start = reply.play_start()
        if m.play_start is not None:
            self._emit("play_start", t=m.play_start, turn_id=ctx.turn_id)
        cut_off = reply.device_lost()
        heard = reply.heard(cut_short=ctx.interrupted or cut_off)
        said = (reply.spoken_any or not ctx.interrupted) and not ctx.retracted
        if ctx.user_added:
            if said and reply.regen_prompt is not None:
                self.history.adopt_past(reply.regen_prompt)  # what the model now has cached, copies dropped
            if said:
                self.history.add_assistant(reply.history_text(ctx.interrupted or cut_off), ctx.interrupted)
            else:
                # Cut off before a word was played: the user's words are re-sent with their next ones.
                self.history.retract_user()
        m.interrupted = ctx.interrupted
        m.loop_lag_max_s = self._lag.take() if self._lag is not None else 0.0
        m.underruns = self._underruns.take()
        m.overruns = self._overruns.take()
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
        if (ctx.user_added and said) or ctx.error:
            self.records.append(record)
            if self.transcript is not None:
                self.transcript.append(record)
        self._emit("turn_end", turn_id=ctx.turn_id, retracted=ctx.retracted, **record)
        if answered or reply.spoken_any:
            self.turns_answered += 1
            return True
        return False
