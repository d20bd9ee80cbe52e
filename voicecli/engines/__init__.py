"""Engine adapters (STT, LLM, TTS), each small and behind a Protocol in `base`."""
