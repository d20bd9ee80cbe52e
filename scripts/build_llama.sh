#!/usr/bin/env bash
# Installs llama-cpp-python into .venv, built for this CPU's instruction sets but never with AMX.
#
# Why: llama.cpp's default build (-march=native) switches on its AMX path on Intel Xeon hosts with AMX, and
# that path segfaults on Q4_1/Q4_K models (issue 11). GGML_AMX_*=OFF alongside GGML_NATIVE=ON does not remove
# it, so the build is non-native with each ISA extension the CPU has turned on explicitly (same speed measured).
# The wheel is cached under a key made of the version and these flags, so a wheel built on one host is never
# installed on a host whose CPU differs (pip's own wheel cache ignores CMAKE_ARGS).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PY=.venv/bin/python

flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
args=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
if [[ "$(uname -m)" == "x86_64" ]]; then
  want() { [[ "$flags" == *" $1 "* ]] && echo ON || echo OFF; }
  args+=(
    -DGGML_SSE42="$(want sse4_2)" -DGGML_AVX="$(want avx)" -DGGML_AVX2="$(want avx2)" -DGGML_FMA="$(want fma)"
    -DGGML_F16C="$(want f16c)" -DGGML_BMI2="$(want bmi2)" -DGGML_AVX_VNNI="$(want avx_vnni)"
    -DGGML_AVX512="$(want avx512f)" -DGGML_AVX512_VBMI="$(want avx512vbmi)"
    -DGGML_AVX512_VNNI="$(want avx512_vnni)" -DGGML_AVX512_BF16="$(want avx512_bf16)"
  )
else
  args=(-DGGML_NATIVE=ON)  # no AMX outside x86
fi
CMAKE_ARGS="${args[*]}"
key=$(printf '%s %s %s' "$VERSION" "$CMAKE_ARGS" "$($PY -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
cache="${VOICECLI_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voicecli/wheels}/llama-$key"

installed=$($PY -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)
stamp=".venv/.llama-build-key"
if [[ "$installed" == "$VERSION" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
  exit 0
fi
if ! ls "$cache"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python $VERSION for this CPU (no AMX; ~6 min on 2 cores, cached afterwards)"
  mkdir -p "$cache"
  CMAKE_ARGS="$CMAKE_ARGS" $PY -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -w "$cache.tmp"
  mv "$cache.tmp"/llama_cpp_python-*.whl "$cache"/ && rm -rf "$cache.tmp"
fi
$PY -m pip install -q --force-reinstall --no-deps "$cache"/llama_cpp_python-"$VERSION"-*.whl
echo "$key" >"$stamp"
