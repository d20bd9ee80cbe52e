"""Where voicecli keeps its files. Every location can be overridden by an env variable."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "voicecli"


def config_file() -> Path:
    env = os.environ.get("VOICECLI_CONFIG")
    return Path(env) if env else Path(platformdirs.user_config_dir(APP)) / "config.toml"


def data_dir() -> Path:
    env = os.environ.get("VOICECLI_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir(APP))


def default_models_dir() -> Path:
    env = os.environ.get("VOICECLI_MODELS_DIR")
    return Path(env) if env else data_dir() / "models"


def sessions_dir() -> Path:
    return data_dir() / "sessions"
