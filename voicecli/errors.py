"""User-facing errors. Each carries a hint: what to run or check next.

The CLI prints `message` and `hint` (no traceback) and exits non-zero.
"""

from __future__ import annotations


class VoicecliError(Exception):
    """An error the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(VoicecliError):
    """A config file, env variable or flag holds a bad key or value."""

    exit_code = 2


class DeviceError(VoicecliError):
    """An audio device is missing, ambiguous, unplugged or refuses a format."""

    exit_code = 3


class ModelError(VoicecliError):
    """A model is missing, truncated, corrupt, or cannot be downloaded."""

    exit_code = 4


class EngineError(VoicecliError):
    """An engine (STT / LLM / TTS) failed at run time."""

    exit_code = 5
