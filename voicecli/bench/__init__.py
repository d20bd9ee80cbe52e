"""`voicecli bench`: per-stage latency of the real pipeline on the audio clock."""
