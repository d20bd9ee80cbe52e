"""What the user has said that no turn has answered yet, assembled into the input of the next turn.

Two things wait here:
* the pieces of a monologue cut at max_utterance_s, transcribed while the user goes on talking;
* the input of a turn a barge-in cut off. Cut before it said a word (while thinking), the user was still
  talking: their words are transcribed again together with what they say next. Cut while speaking, the
  question was answered in part and waits only in case the barge-in was a false alarm.

One rule for a barge-in whose sound the VAD then discards (a cough, "mm", shorter than an utterance): the
cut-off question is asked again at once, alone (`sound_discarded`). Nothing waits for a later utterance to
glue onto.

Pure bookkeeping on the event loop: transcription tasks are started through the `transcribe` callable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from voicecli.audio.format import SAMPLE_RATE, Float32Array
from voicecli.engines.base import Transcript

Transcribe = Callable[[Float32Array], Awaitable[Transcript]]


def _empty() -> Float32Array:
    return np.zeros(0, np.float32)


@dataclass
class TurnInput:
    """What one turn answers, in the order it was said: transcripts of monologue pieces (running or done),
    then audio still to be transcribed. `text`: the transcript, when a cut-off turn already had it."""

    pieces: list[asyncio.Task[Transcript]] = field(default_factory=list)
    audio: Float32Array = field(default_factory=_empty)
    text: str | None = None
    joined_carry: bool = False  # audio cut off from an earlier turn leads `audio`
    resumes: bool = False  # asks again a question whose answer a false barge-in cut while speaking

    @property
    def audio_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def speculation_fits(self) -> bool:
        """The pause's speculative transcript (of the utterance's audio alone) is this input's own."""
        return self.text is None and not self.joined_carry and len(self.audio) > 0

    def transcript(
        self, transcribe: Transcribe, speculative: Awaitable[Transcript] | None = None
    ) -> Awaitable[Transcript] | None:
        """What STT makes of this input: the transcript a cut-off turn already had, else the pause's
        `speculative` one, else a fresh transcription of `audio`; monologue pieces are joined in front. None
        when there is nothing to transcribe."""
        if self.text is not None:
            return _known(Transcript(text=self.text, is_speech=True, audio_s=self.audio_s))
        stt = speculative
        if stt is None and len(self.audio):
            stt = asyncio.ensure_future(transcribe(self.audio))
        return joined(self.pieces, stt) if self.pieces else stt


class UtteranceAssembler:
    def __init__(self, transcribe: Transcribe) -> None:
        self._transcribe = transcribe
        self._pieces: list[asyncio.Task[Transcript]] = []
        self._carried: TurnInput | None = None  # cut while thinking: joins what the user says next
        self._resume: TurnInput | None = None  # cut while speaking: asked again if the sound is discarded
        self.cut_at = 0.0  # end of the speech in the latest monologue piece

    @property
    def pending(self) -> bool:
        """Earlier words wait to be joined to the next utterance: a reply prepared on that utterance alone
        could never be adopted."""
        return bool(self._pieces) or self._carried is not None

    @property
    def monologue(self) -> bool:
        return bool(self._pieces)

    def add_piece(self, audio: Float32Array, speech_end: float) -> None:
        """A piece of a monologue cut at max_utterance_s: transcribe it now (with any carried audio before it,
        which keeps the order of the words), answer it with the rest later."""
        carried = self._carried
        if carried is not None:
            self._pieces.extend(carried.pieces)
            audio = np.concatenate([carried.audio, audio])
            self._carried = None
        self._resume = None  # the user said something new
        self._pieces.append(asyncio.ensure_future(self._transcribe(audio)))
        self.cut_at = speech_end

    def take(self, audio: Float32Array | None) -> TurnInput:
        """The input of a turn confirmed on `audio` (None: the monologue ended at a cut): everything that
        waits, then `audio`. Empties the assembler."""
        carried, self._carried, self._resume = self._carried, None, None
        pieces, self._pieces = self._pieces, []
        audio = _empty() if audio is None else audio
        if carried is None:
            return TurnInput(pieces, audio)
        return TurnInput([*carried.pieces, *pieces], np.concatenate([carried.audio, audio]), joined_carry=True)

    def carry(self, cut: TurnInput, text: str, spoken: bool) -> None:
        """A barge-in cut off the turn that answered `cut` (`text`: its transcript, "" if not in yet)."""
        kept = TurnInput(list(cut.pieces), cut.audio, text or cut.text)
        if spoken:
            kept.resumes = True
            self._resume = kept
        else:
            self._carried = kept

    def sound_discarded(self) -> TurnInput | None:
        """The VAD discarded the sound of a barge-in: the question it cut off, to be asked again now."""
        cut = self._carried or self._resume
        if cut is None:
            return None
        self._carried = self._resume = None
        return cut

    def clear(self) -> None:
        for task in self._pieces:
            task.cancel()
        self._pieces, self._carried, self._resume = [], None, None


async def _known(transcript: Transcript) -> Transcript:
    return transcript


async def joined(pieces: list[asyncio.Task[Transcript]], rest: Awaitable[Transcript] | None) -> Transcript:
    """One transcript for a monologue transcribed in pieces, then `rest`. The pieces are shielded: a turn
    cancelled by a barge-in carries them to the next turn, which needs their results."""
    waits = [asyncio.shield(t) for t in pieces] + ([] if rest is None else [rest])
    results: list[Transcript] = list(await asyncio.gather(*waits))
    heard = [r for r in results if r.is_speech]
    return Transcript(
        text=" ".join(r.text for r in heard),
        is_speech=bool(heard),
        audio_s=sum(r.audio_s for r in results),
        compute_s=results[-1].compute_s,  # the earlier pieces ran while the user was talking
    )
