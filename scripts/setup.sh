#!/usr/bin/env bash
# Sets voicecli up on a fresh Debian/Ubuntu machine: system packages, a virtualenv in .venv, the package.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    plus test tools and the virtual sound card packages
# Idempotent: a second run only checks. The first run builds llama-cpp-python from source (~6 min on 2 cores);
# pip caches the wheel, so later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

pkgs=(libportaudio2 libasound2-plugins espeak-ng)
((DEV)) && pkgs+=(pulseaudio pulseaudio-utils)
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' \
  || pkgs+=(python3-dev)
command -v gcc >/dev/null && command -v g++ >/dev/null || pkgs+=(build-essential)
command -v cmake >/dev/null || pkgs+=(cmake)

missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: voicecli needs Python >= 3.11 (found $(python3 --version))" >&2; exit 1; }
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
bash scripts/build_llama.sh  # before the package, so pip never builds a -march=native llama.cpp itself
if ((DEV)); then
  .venv/bin/pip install -q -e ".[dev]"
else
  .venv/bin/pip install -q -e .
fi
echo "setup: ready (.venv/bin/voicecli)"
