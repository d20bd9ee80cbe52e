"""Work started at the user's early pause, before the end of their turn is confirmed.

At the pause the audio so far is transcribed; once that transcript is in (and the user is still silent) the
reply is started on it too: the LLM streams into the reply pipeline, whose first clause is synthesised and
then waits, with the LLM, on its bounded queues. Nothing is played before the turn is confirmed and asks
exactly what the reply was prepared with (pipeline.turn, ReplyPipeline.adopt). If the user resumes, both
are cancelled and the thrown-away reply is counted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from voicecli.engines.base import ChatMessage, LLMStream, Transcript
from voicecli.pipeline.reply import ReplyPipeline
from voicecli.pipeline.turn import TurnLifecycle


@dataclass
class Speculation:
    audio_len: int
    task: asyncio.Task[Transcript]
    lifecycle: TurnLifecycle
    prompt: list[ChatMessage] | None = None  # what the prepared reply was asked with
    reply: LLMStream | None = None
    # The prepared reply running through chunker and TTS; its first clause's audio waits for the turn.
    pipeline: ReplyPipeline | None = None
    running: asyncio.Task[bool] | None = None

    def cancel(self, reason: str, t: float) -> bool:
        """The user went on talking: cancel the transcription and any prepared reply; True if a prepared
        reply was thrown away."""
        self.task.cancel()
        self.lifecycle.cancel(reason, t)
        return self.drop_reply()

    def drop_reply(self) -> bool:
        """Throw the prepared reply away (the turn asks something else); True if there was one."""
        if self.reply is None:
            return False
        if self.running is not None:
            self.running.cancel()
        if self.pipeline is not None:
            self.pipeline.cancel()
        self.reply.cancel()
        self.reply, self.pipeline, self.running = None, None, None
        return True


async def joined(tasks: list[Any]) -> Transcript:
    """One transcript for a monologue transcribed in chunks."""
    results: list[Transcript] = list(await asyncio.gather(*tasks))
    heard = [r for r in results if r.is_speech]
    return Transcript(
        text=" ".join(r.text for r in heard),
        is_speech=bool(heard),
        audio_s=sum(r.audio_s for r in results),
        compute_s=results[-1].compute_s,  # the earlier chunks ran while the user was talking
    )
