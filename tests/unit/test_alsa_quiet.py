"""ALSA's own stderr messages ("ALSA lib pcm.c ... underrun occurred") never reach the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest

OPEN_MISSING_PCM = """
import ctypes, ctypes.util
{silence}
lib = ctypes.CDLL(ctypes.util.find_library("asound"))
handle = ctypes.c_void_p()
lib.snd_pcm_open(ctypes.byref(handle), b"no_such_pcm_device", 0, 0)
"""


def stderr_of(silence: str) -> str:
    code = OPEN_MISSING_PCM.format(silence=silence)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


def test_alsa_messages_are_silenced() -> None:
    import ctypes.util

    if ctypes.util.find_library("asound") is None:
        pytest.skip("libasound is not installed")
    assert "ALSA lib" in stderr_of("")  # what the user saw, hundreds of times under load
    assert stderr_of("from voicecli.audio.devices import sd; sd()") == ""
