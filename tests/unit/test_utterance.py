"""The utterance assembler: what waits for the next turn, in the order it was said, and the one rule for a
barge-in whose sound was discarded."""

from __future__ import annotations

import asyncio

import numpy as np

from voicecli.engines.base import Transcript
from voicecli.pipeline.utterance import TurnInput, UtteranceAssembler, joined


def audio(seconds: float, value: float) -> np.ndarray:
    return np.full(int(seconds * 16000), value, np.float32)


async def describe(pcm: np.ndarray) -> Transcript:
    """A transcript naming each distinct value of the audio in order (which piece of speech it came from)."""
    values = [str(int(v)) for i, v in enumerate(pcm) if i == 0 or pcm[i - 1] != v]
    return Transcript(text=" ".join(values), is_speech=True, audio_s=len(pcm) / 16000)


def test_a_question_cut_while_thinking_leads_the_next_utterance() -> None:
    a = UtteranceAssembler(describe)
    a.carry(TurnInput(audio=audio(1, 1)), text="", spoken=False)
    assert a.pending
    inp = a.take(audio(1, 2))
    assert inp.joined_carry and list(np.unique(inp.audio)) == [1, 2] and inp.audio[0] == 1
    assert not a.pending and a.sound_discarded() is None  # nothing is left to glue onto a later utterance


def test_a_discarded_barge_in_sound_asks_the_cut_question_again_alone() -> None:
    a = UtteranceAssembler(describe)
    a.carry(TurnInput(audio=audio(1, 1)), text="what time is it", spoken=False)
    again = a.sound_discarded()
    assert again is not None and again.text == "what time is it" and not again.resumes
    assert not a.pending and a.take(audio(1, 2)).joined_carry is False


def test_an_answer_cut_while_speaking_is_resumed_only_if_the_sound_is_discarded() -> None:
    a = UtteranceAssembler(describe)
    a.carry(TurnInput(audio=audio(1, 1)), text="tell me a story", spoken=True)
    assert not a.pending  # a reply prepared on what the user says next stays usable
    assert a.take(audio(1, 2)).joined_carry is False  # they said something new: no resume
    a.carry(TurnInput(audio=audio(1, 1)), text="tell me a story", spoken=True)
    resumed = a.sound_discarded()
    assert resumed is not None and resumed.resumes and resumed.text == "tell me a story"


def test_monologue_pieces_keep_the_order_of_the_words() -> None:
    async def main() -> str:
        a = UtteranceAssembler(describe)
        a.add_piece(audio(1, 1), speech_end=1.0)
        # a barge-in cut the turn answering piece 1 and the audio of 2: both are carried
        cut = a.take(audio(1, 2))
        a.carry(cut, text="", spoken=False)
        a.add_piece(audio(1, 3), speech_end=3.0)  # the user goes on for another whole piece
        stt = a.take(audio(1, 4)).transcript(describe)
        assert stt is not None
        return (await stt).text

    assert asyncio.run(main()) == "1 2 3 4"


def test_a_cancelled_join_leaves_the_pieces_running_for_the_next_turn() -> None:
    async def main() -> None:
        piece = asyncio.ensure_future(describe(audio(1, 1)))
        join = asyncio.ensure_future(joined([piece], asyncio.sleep(10)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        join.cancel()
        await asyncio.sleep(0)
        assert not piece.cancelled() and (await piece).text == "1"

    asyncio.run(main())
