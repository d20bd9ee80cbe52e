"""List audio devices and resolve a user's choice (index or name substring) to a PortAudio index."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from voicecli.audio.format import CHANNELS, SAMPLE_RATE
from voicecli.errors import DeviceError

NO_DEVICES_HINT = (
    "install and start an audio system: on Debian/Ubuntu `sudo apt-get install libportaudio2 "
    "pulseaudio libasound2-plugins` (or use PipeWire), make sure your user may use audio (group 'audio'), "
    "and check that a microphone/speaker is plugged in. Headless? Try `scripts/vsound.sh start` and "
    '`eval "$(scripts/vsound.sh env)"`'
)


def sd() -> ModuleType:
    """Import sounddevice lazily (it initialises PortAudio); a missing library becomes a DeviceError."""
    from voicecli.audio.alsa_quiet import silence_alsa

    silence_alsa()  # before PortAudio probes ALSA devices (it prints their noise too)
    try:
        import sounddevice
    except OSError as exc:  # libportaudio2 missing
        raise DeviceError(f"PortAudio is not available: {exc}", hint=NO_DEVICES_HINT) from None
    return sounddevice


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool
    is_default_output: bool
    accepts_16k_mono_int16: bool


def _defaults(mod: ModuleType) -> tuple[int, int]:
    din, dout = mod.default.device
    return int(din if din is not None else -1), int(dout if dout is not None else -1)


def _accepts_16k(mod: ModuleType, index: int) -> bool:
    try:
        mod.check_input_settings(device=index, samplerate=SAMPLE_RATE, channels=CHANNELS, dtype="int16")
    except Exception:  # PortAudioError or ValueError: the device refuses this format
        return False
    return True


def list_devices(*, probe: bool = True) -> list[DeviceInfo]:
    """All PortAudio devices; `probe` also asks each input whether it takes 16 kHz mono int16."""
    mod = sd()
    try:
        raw: list[dict[str, Any]] = list(mod.query_devices())
        hostapis = [h["name"] for h in mod.query_hostapis()]
    except mod.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}", hint=NO_DEVICES_HINT) from None
    din, dout = _defaults(mod)
    out = []
    for i, d in enumerate(raw):
        ins = int(d["max_input_channels"])
        out.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                hostapi=hostapis[int(d["hostapi"])] if int(d["hostapi"]) < len(hostapis) else "?",
                max_input_channels=ins,
                max_output_channels=int(d["max_output_channels"]),
                default_samplerate=float(d["default_samplerate"]),
                is_default_input=i == din,
                is_default_output=i == dout,
                accepts_16k_mono_int16=probe and ins > 0 and _accepts_16k(mod, i),
            )
        )
    return out


def _describe(devs: list[DeviceInfo]) -> str:
    return "; ".join(f"{d.index}: {d.name}" for d in devs) or "(none)"


def _resolve(spec: int | str | None, kind: str) -> int | None:
    want_input = kind == "input"
    devs = [d for d in list_devices(probe=False) if (d.max_input_channels if want_input else d.max_output_channels) > 0]
    if not devs:
        raise DeviceError(f"no audio {kind} devices found", hint=NO_DEVICES_HINT)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None  # PortAudio's default device
    text = str(spec).strip()
    if isinstance(spec, int) or text.lstrip("-").isdigit():
        index = int(text)
        if any(d.index == index for d in devs):
            return index
        raise DeviceError(
            f"there is no {kind} device with index {index}",
            hint=f"{kind} devices are: {_describe(devs)} (see `voicecli devices`)",
        )
    needle = text.lower()
    exact = [d for d in devs if d.name.lower() == needle]
    matches = exact or [d for d in devs if needle in d.name.lower()]
    if len(matches) == 1:
        return matches[0].index
    if not matches:
        raise DeviceError(
            f"no {kind} device matches {text!r}",
            hint=f"{kind} devices are: {_describe(devs)} (pass an index or a name substring)",
        )
    raise DeviceError(
        f"{text!r} matches several {kind} devices: {_describe(matches)}",
        hint="pass the index, or a longer part of the name",
    )


def resolve_input(spec: int | str | None) -> int | None:
    """Index of the input device named by `spec` (index, or case-insensitive name substring); None = default."""
    return _resolve(spec, "input")


def resolve_output(spec: int | str | None) -> int | None:
    """Index of the output device named by `spec`; None = default."""
    return _resolve(spec, "output")


def device_name(index: int | None, kind: str) -> str:
    mod = sd()
    try:
        info = mod.query_devices(index, kind=kind)
    except (mod.PortAudioError, ValueError) as exc:
        raise DeviceError(f"no default {kind} device: {exc}", hint=NO_DEVICES_HINT) from None
    return str(info["name"])


def monotonic_offset(stream_time: Any) -> float:
    """Offset to add to a PortAudio stream time to get time.monotonic() (midpoint of two readings)."""
    t1 = time.monotonic()
    st = float(stream_time())
    t2 = time.monotonic()
    return (t1 + t2) / 2.0 - st


def is_listed(spec: int | str | None, kind: str) -> bool:
    """Whether PortAudio's current device list has the device `spec` names (None: a default exists)."""
    try:
        index = _resolve(spec, kind)
        if index is None:
            device_name(None, kind)
    except DeviceError:
        return False
    return True


def rescan() -> None:
    """Re-initialise PortAudio so it lists devices plugged in since it started.

    This invalidates every open stream: close them all first and reopen them afterwards.
    """
    mod = sd()
    mod._terminate()
    mod._initialize()
