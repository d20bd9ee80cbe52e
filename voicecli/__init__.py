"""voicecli: a fully local, full-duplex command-line voice assistant."""

import os

# numpy's OpenBLAS starts a thread per core on its first large product and leaves them spinning after each call.
# Nothing of ours needs BLAS threads, and the spinners take the core a whisper worker or llama.cpp needs: a
# one-thread transcription (whisper base, 2-core Xeon) burnt 230 ms of CPU for 136 ms of work, and ran ~50%
# slower in the pipeline. Set before numpy loads here and in every worker we spawn (they inherit it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _amd_with_avx512(info: str | None = None) -> bool:
    """An AMD CPU with every AVX-512 subset CTranslate2's AVX-512 kernels need (its cpu_supports_avx512; forced
    on a CPU without one, CTranslate2 refuses to load a model). `info`: /proc/cpuinfo's text (read when None)."""
    if info is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                info = f.read(65536)
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    need = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
    return "AuthenticAMD" in info and need <= set(flags)


# CTranslate2 leaves AVX-512 out of its automatic dispatch (AVX2 everywhere) and, on AMD, has no MKL either
# (oneDNN does its GEMMs). Its own AVX-512 kernels there: whisper base on one thread, the benchmark's questions
# (2-core AMD EPYC, int8, 10 s window, 3 runs each, alternated): encoder 125-131 -> 115-121 ms p50, the whole
# transcription 221-232 -> 211-219 ms. Not set on Intel, where it was not measured.
if _amd_with_avx512():
    os.environ.setdefault("CT2_FORCE_CPU_ISA", "AVX512")

__version__ = "0.1.0"
