"""voicecli: a fully local, full-duplex command-line voice assistant."""

import os

# numpy's OpenBLAS starts a thread per core on its first large product and leaves them spinning after each call.
# Nothing of ours needs BLAS threads, and the spinners take the core a whisper worker or llama.cpp needs: a
# one-thread transcription (whisper base, 2-core Xeon) burnt 230 ms of CPU for 136 ms of work, and ran ~50%
# slower in the pipeline. Set before numpy loads here and in every worker we spawn (they inherit it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
