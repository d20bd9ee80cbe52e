"""When speech heard during a turn is a barge-in: the session's policy over the VAD and, in echo mode, a
second opinion on the cleaned audio (pipeline.bargein's verdicts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voicecli.pipeline.reply import Emit

Confirm = Callable[[float, float], Any]  # (onset, now) -> a verdict with `.confirmed`


def verdict_fields(verdict: Any) -> dict[str, Any]:
    """A barge-in verdict's evidence for the event log (see pipeline.bargein.Verdict)."""
    r = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {
        "speech_ratio": r(verdict.speech_ratio),
        "level_dbfs": r(verdict.level_dbfs),
        "background_dbfs": r(verdict.background_dbfs),
        "retained_db": r(verdict.retained_db),
        "excess_db": r(verdict.excess_db),
        "over_echo_ceiling_db": r(getattr(verdict, "over_echo_ceiling_db", None)),
        "lag_excess_db": r(getattr(verdict, "lag_excess_db", None)),
    }


class BargeInPolicy:
    """Tracks the speech that began during a turn (`onset`) until it is a barge-in or ends."""

    def __init__(self, min_ms: float, emit: Emit, confirm: Confirm | None = None) -> None:
        self.min_ms = min_ms
        self._emit = emit
        self._confirm = confirm
        self.onset: float | None = None
        self._doubted = False
        self._verdict: Any = None  # the confirming verdict of the barge-in being decided (echo mode)
        # For the event log, so that a slow decision tells why: when the verdict was first asked (100 ms after
        # the onset, or later if the session asked late) and how many verdicts said no before the one that said yes.
        self._asked: float | None = None
        self._refused = 0

    def speech_started(self, t_onset: float) -> None:
        self.onset = t_onset
        self._doubted = False
        self._asked, self._refused = None, 0

    def clear(self) -> None:
        self.onset = None

    def ready(self, speech_s: float, now: float) -> bool:
        """Whether the speech heard during a turn is a barge-in yet.

        Without a second opinion: once it lasts barge_in_min_ms. With one (`--echo aec`), the verdict on the
        cleaned audio decides, asked every frame from half of barge_in_min_ms after the VAD's onset: the
        neural VAD and the raw mic's excess over the echo already reject clicks and coughs. Counted from the
        onset, not by the VAD's voiced frames: the canceller's double-talk suppression can leave a short word
        ("Stop,") under 100 ms of voiced frames, and the reply then played on until the user's next words
        (0.52 s after the onset, where the verdict had long agreed; 1 barge-in in 20 on the rig, next to a
        busy program). Until the verdict agrees the reply keeps playing (nothing is flushed)."""
        if self.onset is None:
            return False
        long_ms = speech_s * 1000.0
        if self._confirm is None:
            return long_ms >= self.min_ms
        if (now - self.onset) * 1000.0 < self.min_ms / 2:
            return False
        verdict = self._confirm(self.onset, now)
        self._asked = now if self._asked is None else self._asked
        self._refused += not verdict.confirmed
        if not verdict.confirmed and long_ms >= self.min_ms and not self._doubted:
            self._doubted = True  # the VAD alone would have cut the reply here
            self._emit("discarded", t=now, reason="not the user", **verdict_fields(verdict))
        if verdict.confirmed:
            self._verdict = verdict
        return bool(verdict.confirmed)

    def is_user(self, now: float) -> bool:
        """A whole utterance that began during a turn: was it the user (not the reply's own echo)?"""
        return self.onset is not None and (self._confirm is None or bool(self._confirm(self.onset, now).confirmed))

    def decided(self) -> dict[str, Any]:
        """The barge-in is decided: its evidence for the event (echo mode), and the policy starts afresh."""
        fields = {} if self._verdict is None else verdict_fields(self._verdict)
        if self._verdict is not None and self._asked is not None and self.onset is not None:
            fields.update(asked_ms=round((self._asked - self.onset) * 1000.0), refused=self._refused)
        self.onset, self._verdict = None, None
        return fields
