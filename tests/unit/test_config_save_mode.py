"""config.save (`voicecli devices --save`) keeps a private config private (issue 17, defect 4)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicecli import config


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # a new file is 0644 unless save decides otherwise
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saving_devices_keeps_a_private_config_with_an_api_key_private(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[llm]\nurl = "http://127.0.0.1:8080/v1"\napi_key = "sk-secret"\n')
    path.chmod(0o600)  # what docs/remote-llm.md recommends
    config.save({"audio": {"input": "3", "output": "Speakers"}}, path=path)
    assert mode(path) == 0o600
    cfg = config.load(path=path)
    assert cfg.llm.api_key == "sk-secret" and cfg.audio.input == "3"


@pytest.mark.parametrize("kept", [0o640, 0o644, 0o400])
def test_save_keeps_whatever_mode_the_file_had(tmp_path: Path, kept: int) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[vad]\nhangover_ms = 600\n")
    path.chmod(kept)
    config.save({"audio": {"input": "USB"}}, path=path)
    assert mode(path) == kept
    assert config.load(path=path).audio.input == "USB"


def test_a_new_config_holding_an_api_key_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    config.save({"llm": {"url": "http://127.0.0.1:8080/v1", "api_key": "sk-secret"}}, path=path)
    assert mode(path) == 0o600
    assert config.load(path=path).llm.api_key == "sk-secret"


def test_a_new_config_without_a_secret_gets_the_umask_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    config.save({"audio": {"input": "USB"}}, path=path)
    assert mode(path) == 0o644
    assert not path.with_suffix(".tmp").exists()


def test_a_leftover_temp_file_does_not_lend_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    leftover = path.with_suffix(".tmp")
    leftover.write_text("half a config")
    leftover.chmod(0o666)
    config.save({"llm": {"api_key": "sk-secret"}}, path=path)
    assert mode(path) == 0o600
