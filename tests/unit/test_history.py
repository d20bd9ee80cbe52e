"""History: token budget, whole-turn dropping, prefix stability, interrupted replies (pure)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import pytest

from voicecli.engines.base import ChatMessage
from voicecli.errors import ConfigError
from voicecli.pipeline.history import INTERRUPTED_SUFFIX, TRUNCATED_PREFIX, History

SYSTEM = "You are a helpful voice assistant. Answer briefly."


def words(messages: Sequence[ChatMessage]) -> int:
    """A stand-in tokenizer: one token per word plus 4 per message for the template markup."""
    return sum(len(m.content.split()) + 4 for m in messages) + 3


def converse(history: History, turns: int) -> list[list[ChatMessage]]:
    prompts = []
    for i in range(turns):
        history.add_user(f"question {i} about the weather and what to wear outside today")
        prompts.append(history.messages())
        history.add_assistant(f"answer {i}: it is mild, so a light jacket will do nicely")
    return prompts


def test_messages_are_system_then_turns_in_order() -> None:
    h = History(SYSTEM, 1000, words)
    h.add_user("hello")
    h.add_assistant("hi there")
    h.add_user("what time is it")
    assert h.messages() == [
        ChatMessage("system", SYSTEM),
        ChatMessage("user", "hello"),
        ChatMessage("assistant", "hi there"),
        ChatMessage("user", "what time is it"),
    ]
    assert h.truncated_turns == 0


def test_hundred_turns_stay_under_budget_keeping_system_and_latest_user() -> None:
    budget = 120
    h = History(SYSTEM, budget, words)
    for i, prompt in enumerate(converse(h, 100)):
        assert words(prompt) <= budget
        assert prompt[0] == ChatMessage("system", SYSTEM)
        assert prompt[-1].role == "user" and prompt[-1].content.startswith(f"question {i} ")
        # Whole turns only: user/assistant alternate after the system prompt, oldest first.
        roles = [m.role for m in prompt[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        numbers = [int(m.content.split()[1].rstrip(":")) for m in prompt[1:]]
        assert numbers == sorted(numbers) and numbers[-1] == i
    assert h.truncated_turns > 80
    assert len(h) == 100


def prompt_extensions(history: History, turns: int) -> int:
    """How many turns' prompts start with the previous turn's prompt (a KV-cache prefix hit)."""
    prompts = converse(history, turns)
    return sum(1 for a, b in itertools.pairwise(prompts) if b[: len(a)] == a)


def test_prefix_stays_stable_between_trims() -> None:
    """Most turns only append to the previous prompt, so llama.cpp reuses its KV cache."""
    stable = prompt_extensions(History(SYSTEM, 400, words), 100)
    # Dropping just enough (one turn) on every overflow misses the cache on nearly every later turn.
    naive = prompt_extensions(History(SYSTEM, 400, words, low_water=1.0), 100)
    assert stable >= 70, f"only {stable}/99 turns reuse the previous prompt as a prefix"
    assert naive < 20


def test_interrupted_reply_keeps_what_was_played_and_says_so() -> None:
    h = History(SYSTEM, 1000, words)
    h.add_user("tell me a long story")
    h.add_assistant("Once upon a time, in a land ", interrupted=True)
    h.add_user("stop, what's the weather")
    assert h.messages()[2] == ChatMessage("assistant", "Once upon a time, in a land" + INTERRUPTED_SUFFIX)


def test_reply_interrupted_before_any_audio_is_still_marked() -> None:
    h = History(SYSTEM, 1000, words)
    h.add_user("hello")
    h.add_assistant("", interrupted=True)
    assert h.messages()[-1] == ChatMessage("assistant", INTERRUPTED_SUFFIX.strip())


def test_oversized_user_message_keeps_its_end_and_is_flagged() -> None:
    budget = 60
    h = History(SYSTEM, budget, words)
    h.add_user("short one")
    h.add_assistant("ok")
    long_text = " ".join(f"w{i}" for i in range(500)) + " so what is the capital of France"
    h.add_user(long_text)
    prompt = h.messages()
    assert h.last_user_truncated
    assert words(prompt) <= budget
    assert prompt[-1].content.startswith(TRUNCATED_PREFIX)
    assert prompt[-1].content.endswith("so what is the capital of France")
    assert prompt[:1] == [ChatMessage("system", SYSTEM)] and len(prompt) == 2
    h.add_assistant("Paris")
    h.add_user("thanks")
    assert not h.last_user_truncated


def test_single_giant_word_is_cut_by_characters() -> None:
    h = History(SYSTEM, 40, lambda ms: sum(len(m.content) // 8 + 4 for m in ms))
    h.add_user("x" * 2000 + "END")
    content = h.messages()[-1].content
    assert content.startswith(TRUNCATED_PREFIX) and content.endswith("END")
    assert h.last_user_truncated


def test_system_prompt_over_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        History("word " * 100, 50, words)
    assert "history_tokens" in err.value.hint


def test_assistant_without_user_is_rejected() -> None:
    h = History(SYSTEM, 100, words)
    with pytest.raises(ValueError):
        h.add_assistant("hello")
    h.add_user("hi")
    h.add_assistant("hello")
    with pytest.raises(ValueError):
        h.add_assistant("again")


def test_clear_forgets_everything_but_the_system_prompt() -> None:
    h = History(SYSTEM, 100, words)
    converse(h, 20)
    h.clear()
    h.add_user("fresh start")
    assert h.messages() == [ChatMessage("system", SYSTEM), ChatMessage("user", "fresh start")]
    assert h.truncated_turns == 0


def test_retract_user_forgets_an_unanswered_message() -> None:
    h = History("sys", 1000, lambda ms: sum(len(m.content.split()) + 1 for m in ms))
    h.add_user("first question")
    h.add_assistant("first answer")
    h.add_user("second question cut off")
    h.retract_user()
    assert [m.content for m in h.messages()] == ["sys", "first question", "first answer"]
    h.retract_user()  # an answered turn is never retracted
    assert len(h) == 1


class Counting:
    """`words` that counts its calls (each one is a template render + tokenize with a real model)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: Sequence[ChatMessage]) -> int:
        self.calls += 1
        return words(messages)


def test_trimming_costs_a_logarithmic_number_of_token_counts() -> None:
    """200 turns with room for ~60 of them: a trim drops ~25 turns, found with a binary search, not one
    count per dropped turn; messages() reuses the count made when the turn was added."""
    count = Counting()
    h = History(SYSTEM, 2000, count)
    per_add: list[int] = []
    in_messages = 0
    trims = 0

    def calls(step: Callable[..., object], *args: str) -> int:
        before = count.calls
        step(*args)
        return count.calls - before

    for i in range(200):
        # As the session does: the user's words, the prompt, then the reply.
        dropped = h.truncated_turns
        per_add.append(calls(h.add_user, f"question {i} about the weather and what to wear outside today"))
        in_messages += calls(h.messages)
        per_add.append(calls(h.add_assistant, f"answer {i}: it is mild, so a light jacket will do nicely"))
        trims += h.truncated_turns > dropped
    assert h.truncated_turns > 100 and trims >= 4
    # add_user: 1 count to check the message fits alone, 1 for the whole view; a trim adds log2(~64) = 6.
    # (Dropping turns one count at a time took 30 counts in each add that trimmed.)
    assert max(per_add) <= 2 + 7, f"{max(per_add)} count_tokens calls in one add"
    assert sum(per_add) <= 3 * 200 + 7 * trims
    assert in_messages == 0


def reference_prompts(budget: int, low_water: float, replies: list[str]) -> list[list[ChatMessage]]:
    """The trimming rule of the module docstring, one count per candidate start (the obvious way)."""
    turns: list[list[ChatMessage]] = []
    system = [ChatMessage("system", SYSTEM)]
    prompts = []

    def view(start: int) -> list[ChatMessage]:
        return system + [m for t in turns[start:] for m in t]

    def trim() -> None:
        if words(view(0)) <= budget:
            return
        start = 0
        while start < len(turns) - 1 and words(view(start)) > int(budget * low_water):
            start += 1
        del turns[:start]

    for i, reply in enumerate(replies):
        turns.append([ChatMessage("user", f"question {i}")])
        trim()
        prompts.append(view(0))
        turns[-1].append(ChatMessage("assistant", reply))
        trim()
    return prompts


@pytest.mark.parametrize("budget,low_water", [(150, 0.6), (300, 0.5), (300, 1.0), (1000, 0.8)])
def test_binary_search_keeps_the_same_turns_as_dropping_one_by_one(budget: int, low_water: float) -> None:
    rng = random.Random(budget)
    replies = [" ".join(["word"] * rng.choice([1, 3, 10, 40, 90])) for _ in range(120)]
    h = History(SYSTEM, budget, words, low_water=low_water)
    got = []
    for i, reply in enumerate(replies):
        h.add_user(f"question {i}")
        got.append(h.messages())
        h.add_assistant(reply)
    assert got == reference_prompts(budget, low_water, replies)


def test_retract_turn_forgets_the_latest_question_and_its_reply() -> None:
    h = History(SYSTEM, 1000, words)
    h.add_user("hello")
    h.add_assistant("hi there")
    h.add_user("what time is it")
    h.add_assistant("it is", interrupted=True)
    h.retract_turn()
    assert [m.content for m in h.messages()] == [SYSTEM, "hello", "hi there"]
