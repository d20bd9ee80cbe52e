"""Bad input at start-up is a clear error with a hint, a non-zero exit and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "VOICECLI_CONFIG": str(tmp_path / "config.toml"),
            "VOICECLI_DATA_DIR": str(tmp_path / "data"), **env}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "voicecli", *args], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_missing_default_model_names_the_pull_command(tmp_path: Path) -> None:
    proc = run(["talk", "--models-dir", str(tmp_path / "models")], tmp_path)
    assert_clean_error(proc, 4, "voicecli models pull whisper-base.en")


@pytest.mark.engines
def test_truncated_gguf_names_the_file(tmp_path: Path) -> None:
    from voicecli.testmodels import generate_all

    models = generate_all(ROOT / ".models", "tiny", progress=lambda _: None)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(models["llm"].read_bytes()[:200_000])
    proc = run(["talk", "--stt", str(models["stt"]), "--llm", str(bad), "--voice", str(models["tts"])], tmp_path)
    assert_clean_error(proc, 4, "broken.gguf")


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[vad]\nhangover = 500\n")
    proc = run(["talk"], tmp_path)
    assert_clean_error(proc, 2, "vad.hangover", "hangover_ms")


def test_bad_value_from_the_environment_names_the_key(tmp_path: Path) -> None:
    proc = run(["talk"], tmp_path, VOICECLI_VAD_AGGRESSIVENESS="9")
    assert_clean_error(proc, 2, "vad.aggressiveness", "0..3")
