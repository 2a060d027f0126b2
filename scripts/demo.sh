#!/usr/bin/env bash
# The demo on a fresh machine: install, then train the tiny policy with a trainer, two vLLM
# rollouts and a warm spare as local processes. Extra arguments go to `slurm-rl launch`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/slurm-rl launch configs/demo.yaml "$@"
