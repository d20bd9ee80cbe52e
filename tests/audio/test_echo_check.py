"""`voicecli devices --test` echo check on the virtual card with the speaker looped back into the mic:
the reported delay, level and removal match the rig's settings (delay 30-150 ms, level -6 to -20 dB,
one case with a room's decaying reflections)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.audio.test_devices_cli import voicecli
from tests.vsound import VSound

pytestmark = [pytest.mark.audio, pytest.mark.slow]
pytest.importorskip("livekit")

# Reflections of `vsound.sh echo room`: +15/+35/+60 ms at these amplitude factors of the direct path.
ROOM = (0.5, 0.3, 0.15)


def check(tmp_path: Path) -> dict[str, object]:
    out = voicecli(
        "devices", "--test", "--json", "--seconds", "0.5",
        "--input", VSound.MIC, "--output", VSound.SPEAKER, config=tmp_path / "c.toml",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    echo: dict[str, object] = json.loads(out.stdout)["echo"]
    return echo


@pytest.mark.parametrize(
    ("delay_ms", "volume", "room"),
    [
        pytest.param(30, 0.5, False, id="30ms--6dB"),
        pytest.param(60, 0.316, False, id="60ms--10dB"),
        pytest.param(150, 0.1, True, id="150ms--20dB-room"),
    ],
)
def test_the_echo_check_measures_delay_level_and_removal(
    vsound: VSound, tmp_path: Path, delay_ms: int, volume: float, room: bool
) -> None:
    with vsound.echo(delay_ms, volume, room=room):
        echo = check(tmp_path)
    assert echo["heard"] is True, echo
    # The loopback's latency setting is a target, not exact: measured 20 ms under it for 30-150 ms
    delay = echo["delay_ms"]
    assert isinstance(delay, float) and delay_ms - 30 <= delay <= delay_ms + 100, echo
    # level: the direct path (plus the reflections' energy in the room case)
    energy = volume**2 * (1 + sum(f * f for f in ROOM) if room else 1)
    level = echo["level_db"]
    assert isinstance(level, float) and abs(level - 10 * math.log10(energy)) <= 3.0, echo
    erle = echo["erle_db"]
    assert isinstance(erle, float) and erle >= 20.0, echo


def test_without_a_loopback_no_echo_is_heard(vsound: VSound, tmp_path: Path) -> None:
    """Headphones: the mic never hears the probe, and the check says so instead of inventing a delay."""
    echo = check(tmp_path)
    assert echo["heard"] is False and echo["delay_ms"] is None and echo["erle_db"] is None, echo
    assert echo["mic_dbfs"] < -60.0  # type: ignore[operator]
