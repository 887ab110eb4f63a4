"""rl_gpt: generative models of neural-network checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rl_gpt")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
