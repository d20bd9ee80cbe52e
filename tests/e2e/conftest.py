"""End-to-end fixtures: `talk` (a running `voicecli talk --plain` on the virtual card) and `tiny_models`."""

from tests.e2e.test_talk import talk, tiny_models  # noqa: F401  (re-exported fixtures)
