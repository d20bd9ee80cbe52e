"""The scripted GGUF's reply chain: unique tokens that spell the reply exactly (pure)."""

from __future__ import annotations

import pytest

from voicecli.testmodels.llama import DEFAULT_REPLY, chain_pieces


@pytest.mark.parametrize(
    "reply",
    [
        DEFAULT_REPLY,
        "a a a a a",
        "\nHello there.\n\nBye.\n",
        "It costs $29.95, i.e. 3.14 times more; don't worry!",
        "Été à Zürich — très chaud 🌞.",
    ],
)
def test_pieces_spell_the_reply_without_repeats(reply: str) -> None:
    pieces = chain_pieces(reply)
    assert "".join(pieces) == reply
    assert len(set(pieces)) == len(pieces)
    assert "\n" not in pieces  # the generation prompt's last token starts the chain


def test_default_reply_is_word_by_word_with_clause_punctuation() -> None:
    pieces = chain_pieces(DEFAULT_REPLY)
    assert len(pieces) > 20
    assert {",", ":", ".", ";", "!"} <= set(pieces)
