"""Audio I/O: formats, ring buffer, capture, playback, devices."""
