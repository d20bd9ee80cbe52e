"""Shared pytest fixtures. Keep this small: fixtures live in their own modules and are imported here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vsound import VSound, start_session_rig


@pytest.fixture(scope="session")
def vsound() -> Iterator[VSound]:
    """One virtual sound card per test session (see tests/vsound.py for the helpers)."""
    rig = start_session_rig()
    try:
        yield rig
    finally:
        rig.stop()
