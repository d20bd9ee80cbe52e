"""A non-editable install knows the models (issue 14): the manifest ships inside the wheel and is read
with importlib.resources, not from a models/ folder beside the package that only a checkout has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or egg-info."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "voicecli", src / "voicecli", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    proc = subprocess.run([*pip, "--no-build-isolation"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:  # no setuptools/wheel in this environment: let pip fetch them
        proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("voicecli-*.whl")
    return wheel


@pytest.mark.slow
def test_installed_wheel_lists_the_shipped_models(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert "voicecli/manifest.toml" in zipfile.ZipFile(wheel).namelist()

    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (target / "models").exists()  # nothing beside the package, as in any site-packages

    env = {**os.environ, "PYTHONPATH": str(target), "VOICECLI_CONFIG": str(tmp_path / "config.toml"),
           "VOICECLI_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    env.pop("VOICECLI_MANIFEST", None)

    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    # the installed copy is the one imported, not the checkout's editable install
    where = run("-c", "import voicecli.models as m; print(m.__file__); print(m.manifest_path())").split()
    assert all(Path(p).is_relative_to(target) for p in where), where
    listed = json.loads(run("-m", "voicecli", "models", "list", "--json", "--dir", str(tmp_path / "models")))
    names = [m["name"] for m in listed["models"]]
    shipped = {"whisper-base.en", "qwen2.5-0.5b-instruct-q4_k_m", "piper-en_US-lessac-medium"}
    assert shipped | {"smollm2-135m-instruct-q4_1"} <= set(names)  # the three defaults and the end-of-turn judge
    assert len(names) == 10
