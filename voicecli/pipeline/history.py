"""Conversation history bounded by a token budget.

Pure and synchronous: the caller passes `count_tokens` (the LLM's own tokenizer + chat template
in production, a word counter in unit tests).

Conventions the model sees:
* An assistant reply cut off by barge-in is stored as what was actually played, followed by
  `INTERRUPTED_SUFFIX`, so the model knows the user did not hear the rest.
* A user message that alone would not fit the budget keeps its *end* (the question usually comes
  last in a long utterance) behind `TRUNCATED_PREFIX`; `last_user_truncated` tells the caller.

Prefix stability: llama.cpp reuses the KV cache for the longest common token prefix of two
prompts. Dropping exactly one old turn whenever the budget overflows would shift every later
turn each time, so *every* turn after the first overflow would re-evaluate the whole history
(~budget tokens of prefill). Instead, on overflow we drop whole turns down to a low-water mark
(`low_water` x budget) and then keep the same first turn until the budget overflows again.
The cost is that the model sees somewhat less history right after a trim; the gain is that
most turns only prefill the new user message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voicecli.engines.base import ChatMessage
from voicecli.errors import ConfigError

INTERRUPTED_SUFFIX = " [interrupted by the user]"
TRUNCATED_PREFIX = "[...] "

CountTokens = Callable[[Sequence[ChatMessage]], int]


@dataclass
class _Turn:
    user: str
    assistant: str | None = None

    def messages(self) -> list[ChatMessage]:
        out = [ChatMessage("user", self.user)]
        if self.assistant is not None:
            out.append(ChatMessage("assistant", self.assistant))
        return out


class History:
    """System prompt + the most recent whole turns that fit `budget_tokens`."""

    def __init__(
        self,
        system_prompt: str,
        budget_tokens: int,
        count_tokens: CountTokens,
        *,
        low_water: float = 0.6,
    ) -> None:
        if not 0.0 < low_water <= 1.0:
            raise ValueError(f"low_water must be in (0, 1], got {low_water}")
        self._system = ChatMessage("system", system_prompt)
        self._budget = budget_tokens
        self._count = count_tokens
        self._low_water = low_water
        self._turns: list[_Turn] = []
        self._start = 0  # index of the first turn still sent to the model
        self._forgotten = 0  # turns dropped for good (memory stays bounded in a long session)
        self._view_count: int | None = None  # count_tokens of the current view, while it is unchanged
        # The system prompt plus an empty user message must fit, or nothing ever can.
        floor = self._count([self._system, ChatMessage("user", "")])
        if floor > budget_tokens:
            raise ConfigError(
                f"the system prompt alone takes {floor} tokens, over the history budget of {budget_tokens}",
                hint="raise llm.history_tokens or shorten llm.system_prompt",
            )
        self.last_user_truncated = False

    @property
    def truncated_turns(self) -> int:
        """Old turns no longer sent to the model (for a warning)."""
        return self._forgotten + self._start

    @property
    def budget_tokens(self) -> int:
        return self._budget

    def __len__(self) -> int:
        """Turns in the conversation so far, including the ones no longer kept."""
        return self._forgotten + len(self._turns)

    def add_user(self, text: str) -> None:
        """Start a new turn. A message too long for the budget keeps its end (see module doc)."""
        fitted = self._fit_user(text)
        self.last_user_truncated = fitted != text
        self._turns.append(_Turn(fitted))
        self._trim()

    def add_assistant(self, text: str, interrupted: bool = False) -> None:
        """Attach the reply to the latest turn: the text that was actually played if interrupted."""
        if not self._turns or self._turns[-1].assistant is not None:
            raise ValueError("add_assistant() needs a preceding add_user()")
        if interrupted:
            text = (text.rstrip() + INTERRUPTED_SUFFIX).lstrip()
        self._turns[-1].assistant = text
        self._trim()

    def adopt_past(self, prompt: Sequence[ChatMessage]) -> None:
        """Make the past turns those of `prompt` (system, user/assistant pairs, then the latest user message,
        which must be this history's): after a reply was asked again on a history it could not copy, that
        history is what the model has cached and what it answered; the dropped turns were what it copied."""
        if not self._turns or self._turns[-1].assistant is not None or prompt[-1].content != self._turns[-1].user:
            raise ValueError("adopt_past() needs a prompt that ends with the latest user message")
        pairs = [m for m in prompt[:-1] if m.role != "system"]
        kept = [_Turn(u.content, a.content) for u, a in zip(pairs[::2], pairs[1::2], strict=True)]
        self._forgotten += max(0, len(self._turns) - 1 - len(kept))
        self._turns = [*kept, self._turns[-1]]
        self._start = 0
        self._view_count = None

    def retract_user(self) -> None:
        """Forget the latest user message when its reply was cut off before a word was played: the user
        was still talking, and those words are sent again together with what they said next."""
        if self._turns and self._turns[-1].assistant is None:
            self.retract_turn()

    def retract_turn(self) -> None:
        """Forget the latest turn, reply and all: its question is asked again (a barge-in that cut the reply
        turned out to be a cough)."""
        if self._turns:
            self._turns.pop()
            self._start = min(self._start, max(0, len(self._turns) - 1))
            self._view_count = None

    def messages(self) -> list[ChatMessage]:
        """The prompt to send: system prompt + kept turns (always including the latest user message)."""
        out = self._view(self._start)
        # Only a fresh, very long reply on the latest turn can overflow here; drop it from the view.
        if len(self._turns) - self._start == 1 and self._counted(out) > self._budget:
            out = [self._system, ChatMessage("user", self._turns[-1].user)]
        return out

    def preview_user(self, text: str) -> list[ChatMessage] | None:
        """The prompt `add_user(text)` then `messages()` will give, when no trim or truncation changes it (None
        otherwise): what a reply prepared before the turn is confirmed is asked with. One count_tokens call."""
        prompt = [*self._view(self._start), ChatMessage("user", text)]
        return prompt if self._count(prompt) <= self._budget else None

    def clear(self) -> None:
        self._turns.clear()
        self._start = 0
        self._forgotten = 0
        self._view_count = None
        self.last_user_truncated = False

    def _counted(self, view: list[ChatMessage]) -> int:
        if self._view_count is None:
            self._view_count = self._count(view)
        return self._view_count

    def _view(self, start: int) -> list[ChatMessage]:
        out = [self._system]
        for turn in self._turns[start:]:
            out.extend(turn.messages())
        return out

    def _trim(self) -> None:
        """Drop whole old turns down to the low-water mark once the budget overflows (see module doc).

        O(log n) `count_tokens` calls (each a template render + tokenize): one for the whole view, then
        a binary search for the first turn to keep. It relies only on a later start never counting more
        tokens; summing counts cached per turn would also need the template to be additive (SmolLM2's
        ChatML is, to the token, but that is a property of the template, not a guarantee)."""
        total = self._count(self._view(self._start))
        self._view_count = total
        if total <= self._budget:
            return  # keep the prefix stable: llama.cpp reuses its KV cache for it
        last = len(self._turns) - 1
        if self._start >= last:
            return  # the latest turn is never dropped (messages() leaves out an oversized reply)
        target = int(self._budget * self._low_water)
        counts: dict[int, int] = {}

        def fits(start: int) -> bool:
            counts[start] = self._count(self._view(start))
            return counts[start] <= target

        # The first start in (start, last] whose view fits the low-water mark, else the last turn alone.
        lo, hi = self._start + 1, last
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        self._start = lo
        self._view_count = counts.get(lo)
        # Turns before the kept window are never sent again: forget them.
        del self._turns[: self._start]
        self._forgotten += self._start
        self._start = 0

    def _fit_user(self, text: str) -> str:
        def fits(candidate: str) -> bool:
            return self._count([self._system, ChatMessage("user", candidate)]) <= self._budget

        if fits(text):
            return text
        # Keep the longest tail of words that fits behind the marker; a single giant "word" is cut by chars.
        words = text.split()
        n = _longest_tail(len(words), lambda k: fits(TRUNCATED_PREFIX + " ".join(words[-k:])))
        if n:
            return TRUNCATED_PREFIX + " ".join(words[-n:])
        last = words[-1] if words else ""
        n = _longest_tail(len(last), lambda k: fits(TRUNCATED_PREFIX + last[-k:]))
        return TRUNCATED_PREFIX + last[-n:] if n else TRUNCATED_PREFIX.strip()


def _longest_tail(total: int, fits: Callable[[int], bool]) -> int:
    """Largest k in [0, total] with fits(k) (fits is monotone: shorter tails fit if longer ones do)."""
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
