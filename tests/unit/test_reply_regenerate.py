"""A reply that opens by copying an earlier reply to another question is never spoken: it is asked once more,
on a history it cannot copy, and the copy stays out of the history (issue 18)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from voicecli.engines.base import ChatMessage, LLMStats, Sampling
from voicecli.pipeline.metrics import TurnMetrics
from voicecli.pipeline.reply import REGEN_SAMPLING, Regeneration, ReplyPipeline
from voicecli.pipeline.turn import TurnLifecycle

RAINBOW = "The rainbow is a beautiful example of how different things can be connected, like light and rain."
PROMPT = [
    ChatMessage("system", "You are a voice assistant."),
    ChatMessage("user", "Explain in one sentence how a rainbow forms."),
    ChatMessage("assistant", RAINBOW),
    ChatMessage("user", "Why is the sky blue?"),
]


class Stream:
    def __init__(self, text: str) -> None:
        words = text.split(" ")
        self.deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
        self.stats = LLMStats()
        self.cancelled = False
        self.read = 0

    def cancel(self) -> None:
        self.cancelled = True

    async def _gen(self) -> AsyncIterator[str]:
        for d in self.deltas:
            if self.cancelled:
                return
            self.read += 1
            yield d

    def __aiter__(self) -> AsyncIterator[str]:
        return self._gen()


def pipeline(events: list[tuple[str, dict[str, object]]]) -> ReplyPipeline:
    def emit(kind: str, t: float | None = None, turn_id: int = 0, **data: object) -> None:
        events.append((kind, data))

    return ReplyPipeline(
        turn_id=1, metrics=TurnMetrics(1), lifecycle=TurnLifecycle.confirmed(0.0), sink=None,  # type: ignore[arg-type]
        tts=None, emit=emit, clock=lambda: 0.0, max_reply_words=70,  # type: ignore[arg-type]
    )  # fmt: skip


def run(first: str, prompt: Sequence[ChatMessage] = PROMPT, second: str = "Sunlight scatters off the air.") -> tuple:
    asked: list[tuple[list[ChatMessage], Sampling]] = []
    again = Stream(second)

    def ask(p: list[ChatMessage], sampling: Sampling) -> Stream:
        asked.append((p, sampling))
        return again

    events: list[tuple[str, dict[str, object]]] = []
    reply = pipeline(events)
    stream = Stream(first)
    reply.stream = stream  # type: ignore[assignment]

    async def main() -> str:
        return "".join([d async for d in reply._fresh_deltas(stream, Regeneration(prompt, ask))])  # type: ignore[arg-type]

    out = asyncio.run(main())
    return out, asked, events, stream, reply


def test_a_copied_opening_is_never_spoken_and_is_asked_again_on_a_history_without_it() -> None:
    out, asked, events, first, reply = run(RAINBOW)
    assert out == "Sunlight scatters off the air."  # not a word of the copy
    assert first.cancelled and first.read < len(first.deltas)  # noticed within its opening
    assert len(asked) == 1
    prompt, sampling = asked[0]
    assert sampling == REGEN_SAMPLING
    assert all(RAINBOW not in m.content for m in prompt)  # the copied reply is not in the new prompt
    assert prompt[0].role == "system" and prompt[-1].content == "Why is the sky blue?"
    assert [k for k, _ in events] == ["reply_regenerated"]
    assert reply.regenerated


def test_a_fresh_reply_passes_unchanged_and_nothing_is_asked_again() -> None:
    text = "The sky looks blue because air scatters blue light more than red."
    out, asked, events, first, _ = run(text)
    assert out == text and asked == [] and events == [] and not first.cancelled


def test_the_same_answer_to_the_same_question_asked_again_is_not_a_copy() -> None:
    prompt = [*PROMPT[:3], ChatMessage("user", "Explain in one sentence how a rainbow forms.")]
    out, asked, _, _, _ = run(RAINBOW, prompt)
    assert out == RAINBOW and asked == []


def test_a_short_reply_is_judged_when_it_ends() -> None:
    prompt = [*PROMPT[:2], ChatMessage("assistant", "I am not sure."), PROMPT[3]]
    out, asked, _, _, _ = run("I am not sure.", prompt)
    assert asked and out == "Sunlight scatters off the air."


def test_after_a_regeneration_the_history_is_the_prompt_the_model_answered_and_has_cached() -> None:
    """The next turn must reuse the KV cache: the history becomes the regeneration's prompt (the copied
    exchanges dropped) plus its answer, so only the new question is prefilled next time (bench: a 420-token
    prefill, 3.3 s next to a busy process, when the history kept the copied turns)."""
    from voicecli.pipeline.history import INTERRUPTED_SUFFIX, History

    history = History("You are a voice assistant.", 2000, lambda ms: sum(len(m.content.split()) + 4 for m in ms))
    history.add_user("Explain in one sentence how a rainbow forms.")
    history.add_assistant(RAINBOW)
    history.add_user("Hold on.")
    history.add_assistant("Sure, I can", interrupted=True)
    history.add_user("Why is the sky blue?")
    out, asked, _, _, reply = run(RAINBOW, history.messages())
    prompt = asked[0][0]
    assert reply.regen_prompt == prompt
    assert ChatMessage("assistant", "Sure, I can" + INTERRUPTED_SUFFIX) in prompt  # as the history shows it
    history.adopt_past(prompt)
    history.add_assistant(out)
    assert history.messages() == [*prompt, ChatMessage("assistant", out)]
    assert all(RAINBOW not in m.content for m in history.messages())
