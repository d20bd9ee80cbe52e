"""Keep ALSA's own messages off the user's terminal.

libasound prints "ALSA lib pcm.c:...: underrun occurred" (and device-probe noise) straight to stderr from
inside PortAudio; under load that was hundreds of lines over the live view. ALSA lets a program install its
error handler: a no-op one silences it. PortAudio's own errors still arrive as exceptions, and voicecli
counts underruns itself (they are in every turn's metrics).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

# void handler(const char *file, int line, const char *function, int err, const char *fmt, ...)
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
_installed: Any = None


def _ignore(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    return None


def silence_alsa() -> bool:
    """Install the no-op handler once; False when libasound is not there (nothing to silence)."""
    global _installed
    if _installed is not None:
        return True
    name = ctypes.util.find_library("asound")
    if name is None:
        return False
    try:
        lib = ctypes.CDLL(name)
        handler = _HANDLER(_ignore)
        lib.snd_lib_error_set_handler(handler)
    except (OSError, AttributeError):
        return False
    _installed = handler  # keep the callback alive as long as the library may call it
    return True
