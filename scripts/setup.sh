#!/usr/bin/env bash
# Create .venv and install rl_gpt into it (idempotent). Used by `make demo`, `make test` and CI.
# torch is installed first and explicitly (TORCH_SPEC) so pip does not pull a multi-GB CUDA build
# when the project's own `torch>=...` requirement is resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# Where pip finds torch: unset, pip's own configuration decides (a local CPU wheel on our machines;
# on plain PyPI under Linux that is the CUDA build). TORCH_INDEX=https://download.pytorch.org/whl/cpu
# fetches the CPU wheel from PyTorch's index instead.
TORCH_INDEX=${TORCH_INDEX:-}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.rl_gpt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [ -n "$TORCH_INDEX" ]; then
    .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX" "$TORCH_SPEC"
  else
    .venv/bin/python -m pip install -q "$TORCH_SPEC"
  fi
  .venv/bin/python -m pip install -q -e ".[dev,ray]"
  touch "$stamp"
fi
