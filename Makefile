# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each installs what it needs into .venv first (scripts/setup.sh).
.PHONY: setup demo test test-all lint

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/rl-gpt demo --out runs/demo

test: setup
	.venv/bin/python -m pytest -m "not slow" -q

test-all: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
