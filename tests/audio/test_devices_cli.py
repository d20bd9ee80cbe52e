"""`voicecli devices` as a user runs it: a subprocess against the virtual sound card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.vsound import VSound

pytestmark = pytest.mark.audio

ROOT = Path(__file__).resolve().parents[2]


def voicecli(*args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOICECLI_CONFIG": str(config), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "voicecli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_json_lists_the_virtual_mic_and_speaker(vsound: VSound, tmp_path: Path) -> None:
    out = voicecli("devices", "--json", config=tmp_path / "c.toml")
    assert out.returncode == 0, out.stderr
    devs = {d["name"]: d for d in json.loads(out.stdout)["devices"]}
    mic, speaker = devs[VSound.MIC], devs[VSound.SPEAKER]
    assert mic["max_input_channels"] > 0 and mic["max_output_channels"] == 0
    assert mic["accepts_16k_mono_int16"] is True
    assert speaker["max_output_channels"] > 0 and speaker["max_input_channels"] == 0
    assert speaker["default_samplerate"] == VSound.SPEAKER_RATE
    assert sum(d["is_default_input"] for d in devs.values()) == 1


def test_table_marks_the_chosen_devices(vsound: VSound, tmp_path: Path) -> None:
    out = voicecli("devices", "--input", "VOICECLI_MIC", "--output", "speaker", config=tmp_path / "c.toml")
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[2].strip(): line for line in out.stdout.splitlines() if line.count("│") > 3}
    assert ">in" in rows[VSound.MIC] and ">out" in rows[VSound.SPEAKER]


def test_unknown_device_exits_nonzero_listing_the_candidates(vsound: VSound, tmp_path: Path) -> None:
    out = voicecli("devices", "--input", "no such microphone", config=tmp_path / "c.toml")
    assert out.returncode == 3
    assert "no input device matches 'no such microphone'" in out.stderr
    assert VSound.MIC in out.stderr and "Traceback" not in out.stderr


def test_save_stores_the_choice_in_the_config_file(vsound: VSound, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    out = voicecli("devices", "--input", "mic", "--output", "voicecli_speaker", "--save", config=config)
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(config.read_text())["audio"] == {"input": VSound.MIC, "output": VSound.SPEAKER}
    # the saved choice is what `devices` (and `talk`) use from now on; a flag still overrides it
    listed = json.loads(voicecli("devices", "--json", config=config).stdout)
    names = {d["index"]: d["name"] for d in listed["devices"]}
    assert names[listed["input"]] == VSound.MIC and names[listed["output"]] == VSound.SPEAKER
    assert json.loads(voicecli("devices", "--json", "--input", "", config=config).stdout)["input"] is None


def test_level_test_reports_the_rms_of_a_known_tone(vsound: VSound, tmp_path: Path) -> None:
    rate, level_dbfs = 16_000, -20.0
    t = np.arange(rate * 10) / rate
    tone = (10 ** (level_dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * 1000 * t) * 32768).astype(np.int16)
    vsound.feed(tone, rate)
    time.sleep(0.3)  # the tone is playing before the recording starts
    with vsound.record() as rec:
        out = voicecli(
            "devices", "--test", "--json", "--seconds", "2", "--no-echo-check",
            "--input", VSound.MIC, "--output", VSound.SPEAKER, config=tmp_path / "c.toml",
        )  # fmt: skip
    vsound.wait_feeds()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert abs(result["input"]["rms_dbfs"] - level_dbfs) <= 1.0
    assert abs(result["input"]["peak_dbfs"] - (level_dbfs + 3.01)) <= 1.0
    assert result["input"]["overrun_samples"] == 0 and result["input"]["silence_warning"] is None
    # then the test tone came out of the speaker
    assert result["output"]["played_seconds"] > 0.7
    assert np.abs(rec.pcm).max() > 0.1 * 32768
