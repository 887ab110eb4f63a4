#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CUDA (~5 minutes on an H200): the CUDA tests, then
# the digits_full generator collected, trained and swept there (docs/results.md: R2 0.989).
#   bash scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/gpu_check}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')"
python -m pytest -q tests/test_cuda.py tests/test_envs.py -k cuda
rl-gpt collect digits_full "out=$out" -q
rl-gpt train digits_full "out=$out" device=cuda
rl-gpt sweep digits_full "out=$out" device=cuda
