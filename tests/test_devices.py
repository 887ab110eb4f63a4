"""Device settings: a name torch does not know, or a GPU the machine lacks, is a one-line error."""

import pytest
import torch

from rl_gpt.cli import main
from rl_gpt.config import ConfigError
from rl_gpt.devices import resolve_device


def test_cpu_and_bad_names():
    assert resolve_device("cpu", "train.device") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device='gpu' is not a device; use cpu, cuda or cuda:N"):
        resolve_device("gpu", "train.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_to_use_the_cpu(tmp_path, capsys):
    with pytest.raises(ConfigError, match="sweep.device=cuda: this machine has no CUDA device; pass device=cpu"):
        resolve_device("cuda", "sweep.device")
    assert main(["train", "cartpole", f"out={tmp_path}", "device=cuda", "-q"]) == 2
    err = capsys.readouterr().err
    assert "train.device=cuda: this machine has no CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()
