"""What the session needs from the audio layer, as Protocols, so scripted-timeline tests can drive it with
fakes on a virtual clock and the real app with PortAudio streams (voicecli.audio)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np
import numpy.typing as npt


class FrameLike(Protocol):
    @property
    def pcm(self) -> npt.NDArray[np.int16]:
        """20 ms, 16 kHz mono int16 (320 samples)."""

    @property
    def t(self) -> float:
        """ADC time of the first sample on time.monotonic()."""


class FrameSource(Protocol):
    def frames(self) -> AsyncIterator[FrameLike]: ...


class AudioSink(Protocol):
    """A playback queue. One reply at a time; `flush` silences it from the next output callback."""

    @property
    def rate(self) -> int: ...

    def begin_reply(self, reply_id: int) -> None: ...

    async def write(self, pcm: npt.NDArray[np.int16]) -> None: ...

    def end_reply(self) -> None: ...

    def flush(self) -> None: ...

    def played_samples(self, reply_id: int) -> int: ...

    def play_start(self, reply_id: int) -> float | None: ...

    async def wait_reply_done(self, reply_id: int) -> None: ...
