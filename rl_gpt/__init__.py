"""rl_gpt: generative models of neural-network checkpoints."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on demand: importlib.metadata costs every command ~60 ms to import
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("rl_gpt")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'rl_gpt' has no attribute {name!r}")
