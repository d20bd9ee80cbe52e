"""The lifecycle of one assistant turn, as a small pure state machine (no audio, no asyncio).

    PROPOSED --confirm--> CONFIRMED --speak--> SPEAKING --finish--> DONE
        |                     |                    |
        +-------cancel--------+--------cancel------+--> CANCELLED

PROPOSED: the user paused; a speculative transcript and possibly a reply are being prepared, and nothing
may be played. CONFIRMED: the end of the turn is confirmed (the hangover passed); the reply may play.
SPEAKING: its first audio is queued for the speaker. DONE / CANCELLED are final: a turn cancelled while
PROPOSED threw its work away (the user went on talking); one cancelled later was interrupted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Phase(enum.Enum):
    PROPOSED = "proposed"
    CONFIRMED = "confirmed"
    SPEAKING = "speaking"
    DONE = "done"
    CANCELLED = "cancelled"


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.PROPOSED: frozenset({Phase.CONFIRMED, Phase.CANCELLED}),
    Phase.CONFIRMED: frozenset({Phase.SPEAKING, Phase.DONE, Phase.CANCELLED}),
    Phase.SPEAKING: frozenset({Phase.DONE, Phase.CANCELLED}),
    Phase.DONE: frozenset(),
    Phase.CANCELLED: frozenset(),
}


class TurnStateError(RuntimeError):
    """A transition the lifecycle does not allow: a bug in the caller, never a user error."""


@dataclass
class TurnLifecycle:
    """One turn's phase and when it entered each phase (seconds, the session's clock)."""

    phase: Phase = Phase.PROPOSED
    cancel_reason: str | None = None
    times: dict[Phase, float] = field(default_factory=dict)
    cancelled_in: Phase | None = None  # the phase the turn was in when it was cancelled

    @classmethod
    def proposed(cls, t: float) -> TurnLifecycle:
        return cls(Phase.PROPOSED, times={Phase.PROPOSED: t})

    @classmethod
    def confirmed(cls, t: float) -> TurnLifecycle:
        """A turn that starts confirmed (no speculation: the transcript is only asked for now)."""
        return cls(Phase.CONFIRMED, times={Phase.CONFIRMED: t})

    def _go(self, to: Phase, t: float) -> None:
        if to not in _NEXT[self.phase]:
            raise TurnStateError(f"a turn cannot go from {self.phase.value} to {to.value}")
        self.phase = to
        self.times[to] = t

    def confirm(self, t: float) -> None:
        self._go(Phase.CONFIRMED, t)

    def speak(self, t: float) -> None:
        """The first audio of the reply is queued; only a confirmed turn may play anything."""
        if self.phase is not Phase.SPEAKING:
            self._go(Phase.SPEAKING, t)

    def finish(self, t: float) -> None:
        """The reply ended by itself (or there was nothing to say). A cancelled turn stays cancelled."""
        if not self.ended:
            self._go(Phase.DONE, t)

    def cancel(self, reason: str, t: float) -> bool:
        """Cancel the turn; False if it had already ended (nothing to do)."""
        if self.ended:
            return False
        self.cancelled_in = self.phase
        self.cancel_reason = reason
        self._go(Phase.CANCELLED, t)
        return True

    @property
    def ended(self) -> bool:
        return self.phase in (Phase.DONE, Phase.CANCELLED)

    @property
    def may_play(self) -> bool:
        return self.phase in (Phase.CONFIRMED, Phase.SPEAKING)

    @property
    def wasted(self) -> bool:
        """Cancelled before it was confirmed: whatever was prepared was thrown away."""
        return self.cancelled_in is Phase.PROPOSED

    @property
    def interrupted(self) -> bool:
        """Cancelled after it was confirmed (by a barge-in, a shutdown)."""
        return self.phase is Phase.CANCELLED and not self.wasted
