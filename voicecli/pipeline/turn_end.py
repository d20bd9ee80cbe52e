"""The semantic end of turn: at the user's early pause, do the words say they are done?

Three signals, in order (each is cheap next to the transcription it follows):
1. **The words, by rule** (pipeline.endpoint): a transcript ending on "and", "the", "um" or a comma (or on "..."
   after such a word) is a speaker going on: the pause is held open longer (a speaker still looking for words,
   `still_thinking`, up to ~2.5 s of silence in all). A request closed by a courtesy tag ("..., please.") is done:
   the turn ends at the pause (`closes_request`).
2. **The words, by the LLM**: the probability of the chat template's end-of-turn token right after the user's
   words (LlamaLLM.end_of_turn, LiveKit's method). High: the turn ends now, at the pause, instead of after
   the full hangover. Near zero: held open like an unfinished sentence.
3. **The VAD's timing** (the fallback): no judge, a judge that cannot judge (a generated model), a middling
   probability, or a verdict that came after the hangover already ended the turn.

Measured with real SmolLM2-135M and whisper-style punctuation (DESIGN.md): 0.000 after "Can you tell me",
0.24-0.86 after whole questions, 0.1-0.4 after short commands. A first half that is itself a sentence
("Tell me a joke.") scores like a whole question: the words cannot tell that pause from an end, so only a
question (`is_question`: a "?", or a question word first) is ended at the pause; a command or a statement waits
for the hangover.

A model is trusted as a judge only if it separates whole questions from open phrases at start-up
(`calibrated`): a generated test model or a random-weight one puts near-zero mass on the token everywhere.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voicecli.engines.base import ChatMessage
from voicecli.pipeline.endpoint import sounds_unfinished, still_thinking

COMPLETE = "complete"
INCOMPLETE = "incomplete"
FALLBACK = "fallback"

BY_WORDS = "words"  # the transcript rules
BY_LLM = "llm"  # the end-of-turn probability
BY_VAD = "vad"  # the hangover, unchanged

# Start-up probes: a judge must put real mass on the end token after each whole question, and none after each
# open phrase, or it is not used.
WHOLE = ("How tall is Mount Everest?", "What time is it in London?")
OPEN = ("Can you tell me", "What is the")


@dataclass(frozen=True)
class Thresholds:
    complete_p: float = 0.4  # at or above: the turn ends at the pause (see config.VadConfig)
    incomplete_p: float = 0.01  # below: the pause is held open longer


@dataclass(frozen=True)
class Decision:
    kind: str  # COMPLETE | INCOMPLETE | FALLBACK
    by: str  # BY_WORDS | BY_LLM | BY_VAD
    p: float | None = None  # the end-of-turn probability, when the LLM judged
    late: bool = False  # the verdict came after the turn had already ended
    judge_s: float = 0.0  # from asking the judge to its verdict
    thinking: bool = False  # INCOMPLETE by the words, and they end like a speaker looking for words (held longer)


def by_words(text: str) -> Decision | None:
    """The rules on the words alone: INCOMPLETE if they sound unfinished, COMPLETE after a request closed by a
    courtesy tag (`closes_request`), else None (ask the LLM)."""
    if sounds_unfinished(text):
        return Decision(INCOMPLETE, BY_WORDS, thinking=still_thinking(text))
    if closes_request(text):
        return Decision(COMPLETE, BY_WORDS)
    return None


# What a speaker adds after a whole request, last: "Set a timer for ten minutes, please." ends there. SmolLM2 gave
# those words 0.35, under the question threshold, and as a command they waited for the hangover (~560 ms).
COURTESY_TAGS = frozenset(["please", "thanks", "thank you"])
REQUEST_MIN_WORDS = 3  # before the tag: "Yes, please." is a reply to the assistant's question, left to the rest


def closes_request(text: str) -> bool:
    """The words are a request closed by a courtesy tag: a clause of at least REQUEST_MIN_WORDS words, a comma,
    then "please", "thanks" or "thank you" and a full stop or "!" ("Could you please." has no comma: not one)."""
    stripped = text.strip()
    if not stripped.endswith((".", "!")) or stripped.endswith(("...", "…")):
        return False
    head, comma, tag = stripped.rstrip(".!").rpartition(",")
    return bool(comma) and tag.strip().lower() in COURTESY_TAGS and len(head.split()) >= REQUEST_MIN_WORDS


# Words that open an English question. Whisper does not always end one with "?": after a mid-sentence pause it
# wrote "What should I cook? For dinner tonight with rice." (judge: 0.61), which then waited for the hangover.
_QUESTION_TEXT = """
    what what's whats how how's why when when's where where's who who's whom whose which
    can could would will is isn't are aren't was were do does doesn't did didn't don't should shall may might
    have has had won't wouldn't can't couldn't shouldn't am
"""
QUESTION_OPENERS = frozenset(_QUESTION_TEXT.split())
_FIRST_WORD = re.compile(r"[a-z']+")


def ends_sentence(text: str) -> bool:
    """The transcript ends on a sentence's own punctuation; a trailing "..." is not one (the voice trailed off:
    whisper writes it after half a sentence as after a whole one)."""
    stripped = text.rstrip()
    return stripped.endswith((".", "?", "!")) and not stripped.endswith(("...", "…"))


def is_question(text: str) -> bool:
    """The words are a question: they end with "?", or with "." after a question word first ("What should I
    cook? For dinner tonight with rice."). Unpunctuated words are not: whisper leaves a sentence it hears going
    on without a stop. Only a question is ended at the pause (`by_probability`)."""
    stripped = text.strip()
    if stripped.endswith("?"):
        return True
    first = _FIRST_WORD.match(stripped.lower())
    return first is not None and first.group() in QUESTION_OPENERS and ends_sentence(stripped)


def by_probability(p: float | None, text: str, th: Thresholds) -> Decision:
    """The LLM's verdict. A high probability ends the turn at the pause only after a question: a command or a
    statement is as often the first half of a longer one ("Tell me a joke." + "about computers and cats." scored
    0.77, above most whole questions, and split the turn in most runs; whole commands scored 0.0-0.75): those
    are left to the hangover. A low probability holds the pause open only after a punctuated transcript
    (`ends_sentence`: a "..." is not one): whisper leaves a continued sentence unpunctuated ("which planet in our
    solar system is the largest"), and the model then puts no mass on the end token even after whole questions."""
    if p is None:
        return Decision(FALLBACK, BY_VAD)
    if p >= th.complete_p and is_question(text):
        return Decision(COMPLETE, BY_LLM, p)
    if p < th.incomplete_p and ends_sentence(text):
        return Decision(INCOMPLETE, BY_LLM, p)
    return Decision(FALLBACK, BY_LLM, p)


Score = Callable[[Sequence[ChatMessage]], asyncio.Future[float | None] | None]
Prefill = Callable[[Sequence[ChatMessage]], asyncio.Future[int] | None]


async def calibrated(score: Score, system: str, th: Thresholds) -> bool:
    """True when the model behind `score` tells whole questions from open phrases (see module doc)."""

    async def p(text: str) -> float:
        pending = score([ChatMessage("system", system), ChatMessage("user", text)])
        got = await pending if pending is not None else None
        return -1.0 if got is None else got

    whole = [await p(t) for t in WHOLE]
    open_ = [await p(t) for t in OPEN]
    return min(whole) >= th.complete_p / 2 and max(open_) < th.incomplete_p


class Judge:
    """An LLM asked whether the user is done. `shares_prompt`: it is the reply LLM, asked with the reply's own
    prompt (its KV cache then holds what the reply needs); otherwise a small model of its own, asked with the
    system prompt and the user's words only. `usable` is set by `check()` at start-up."""

    def __init__(
        self,
        score: Score,
        system: str,
        *,
        shares_prompt: bool,
        name: str,
        th: Thresholds,
        prefill: Prefill | None = None,
        beside_reply: Callable[[], bool] | None = None,
    ) -> None:
        """`prefill`: what evaluates a judge of its own's prompt into its cache ahead of `ask` (LlamaLLM.prefill).
        `beside_reply()`: a judge of its own may be asked after the reply has started, without delaying it (see
        pipeline.speculation)."""
        self._score = score
        self.beside_reply = beside_reply or (lambda: False)
        self._prefill = prefill
        self._system = system
        self.shares_prompt = shares_prompt
        self.name = name
        self.thresholds = th
        self.usable = False

    async def check(self) -> bool:
        self.usable = await calibrated(self._score, self._system, self.thresholds)
        return self.usable

    def ask(self, text: str, prompt: Sequence[ChatMessage] | None) -> asyncio.Future[float | None] | None:
        """The end-of-turn probability after `text` (None: cannot ask now)."""
        if not self.usable:
            return None
        if self.shares_prompt:
            return None if prompt is None else self._score(prompt)
        return self._score([ChatMessage("system", self._system), ChatMessage("user", text)])

    def prefill(self, words: str) -> asyncio.Future[int] | None:
        """While the user speaks: a judge of its own evaluates the system prompt and `words` (their words
        so far) into its cache, so that at the pause `ask` evaluates only the rest (~60 -> ~20 ms with SmolLM2
        on 2 cores). The reply LLM as the judge is prefilled with the reply's prompt already (pipeline.prefill)."""
        if not self.usable or self.shares_prompt or self._prefill is None or not words.strip():
            return None
        return self._prefill([ChatMessage("system", self._system), ChatMessage("user", words)])
