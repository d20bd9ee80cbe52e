"""History: token budget, whole-turn dropping, prefix stability, interrupted replies (pure)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

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
