"""Work started at the user's early pause, before the end of their turn is confirmed.

At the pause the audio so far is transcribed; once that transcript is in (and the user is still silent) the
reply may be started on it too: the LLM stream fills its bounded delta queue (prefill and the first tokens)
and then waits. Nothing is played before the turn is confirmed (pipeline.turn). If the user resumes, both
are cancelled and the thrown-away reply is counted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from voicecli.engines.base import ChatMessage, LLMStream, Transcript
from voicecli.pipeline.turn import TurnLifecycle


@dataclass
class Speculation:
    audio_len: int
    task: asyncio.Task[Transcript]
    lifecycle: TurnLifecycle
    prompt: list[ChatMessage] | None = None  # what the prepared reply was asked with
    reply: LLMStream | None = None

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
        self.reply.cancel()
        self.reply = None
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
