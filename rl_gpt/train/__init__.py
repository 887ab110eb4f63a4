"""Training the generator: the loop, EMA, resumable checkpoints, DDP and model files."""

from rl_gpt.train.generator import ParameterGenerator
from rl_gpt.train.loop import train
from rl_gpt.train.modelfile import ModelFileError, check_compatible, load_generator, save_model

__all__ = ["ModelFileError", "ParameterGenerator", "check_compatible", "load_generator", "save_model", "train"]
