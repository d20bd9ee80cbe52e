#!/usr/bin/env bash
# Creates /work/pipecat-venv: a fully local pipecat 1.14 voice stack for scripts/pipecat_bench.py.
#   Silero VAD + Smart Turn v3 (both ONNX, shipped in the pipecat-ai wheel), faster-whisper STT,
#   OpenAI-compatible LLM client -> llama_cpp.server (same prebuilt llama-cpp-python wheel as voicecli,
#   built without AMX), in-process Piper TTS, LocalAudioTransport (PyAudio) on the virtual sound card.
# Usage: scripts/pipecat_setup.sh [VENV]   (idempotent; ~2 min)
set -euo pipefail

VENV=${1:-/work/pipecat-venv}
LLAMA_WHEEL=$(ls ~/.cache/voicecli/wheels/llama-*/llama_cpp_python-0.3.36-*.whl | head -1)

# PyAudio has no Linux wheels: it builds against the PortAudio headers.
if ! dpkg -s portaudio19-dev >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends portaudio19-dev
fi

[[ -x $VENV/bin/python ]] || python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip==25.3

# Exact versions; the engine libraries match voicecli's venv (faster-whisper 1.2.1, ctranslate2 4.8.5,
# piper-tts 1.8.0, onnxruntime 1.32.0) so both stacks run the same inference code.
"$VENV/bin/pip" install -q \
    "pipecat-ai[local,silero,whisper,piper,openai]==1.14.0" \
    pyaudio==0.2.14 \
    faster-whisper==1.2.1 ctranslate2==4.8.5 \
    piper-tts==1.8.0 onnxruntime==1.32.0 \
    "$LLAMA_WHEEL" \
    uvicorn==0.38.0 fastapi==0.121.1 pydantic-settings==2.11.0 sse-starlette==3.0.3 \
    starlette-context==0.3.6 PyYAML==6.0.3

"$VENV/bin/pip" freeze >"$VENV/freeze.txt"
"$VENV/bin/python" -c "import pipecat, pyaudio, faster_whisper, piper, llama_cpp; print('pipecat venv ok')"
