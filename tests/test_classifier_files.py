"""Classifier files: generated state dicts that say which network and data set they hold."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rl_gpt.cli import main
from rl_gpt.generate import export_safetensors
from rl_gpt.supervised import (
    ClassifierFileError,
    build_classifier,
    classifier_layout,
    classifier_metadata,
    classifier_test_metrics,
    read_classifier_file,
)


def _network() -> torch.Tensor:
    torch.manual_seed(0)
    return classifier_layout("digits_mlp").flatten(build_classifier("digits_mlp").state_dict())


def _export_digits(flat: torch.Tensor, path: Path) -> Path:
    return export_safetensors(classifier_layout("digits_mlp"), flat, path, classifier_metadata("digits_mlp", None))


def test_a_classifier_with_nan_weights_is_not_exported(tmp_path):
    flat = _network()
    flat[3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        _export_digits(flat, tmp_path / "c.safetensors")
    assert not list(tmp_path.iterdir())


def test_an_exported_classifier_reads_back_with_its_network_and_data_set(tmp_path):
    flat = _network()
    path = _export_digits(flat, tmp_path / "c.safetensors")
    file = read_classifier_file(path)
    assert (file.network, file.dataset, file.data_root) == ("digits_mlp", "digits", None)
    assert torch.equal(file.params, flat)
    with pytest.raises(ClassifierFileError, match="digits_mlp classifies digits, not mnist"):
        read_classifier_file(path, "digits_mlp", "mnist")
    meta = classifier_metadata("mnist_mlp", "data/mnist")
    assert meta["rl_gpt.dataset"] == "mnist" and meta["rl_gpt.data_root"] == str(Path("data/mnist").resolve())


def test_rl_gpt_evaluate_measures_a_classifier_file(tmp_path, capsys):
    flat = _network()
    path = _export_digits(flat, tmp_path / "c.safetensors")
    assert main(["evaluate", str(path)]) == 0
    expected = classifier_test_metrics("digits_mlp", "digits", flat[None])
    assert f"test loss {float(expected['test_loss'][0]):.4f}" in capsys.readouterr().out


def test_a_classifier_with_nan_weights_measures_nan_not_the_zero_networks_loss():
    flat = _network()
    broken = flat.clone()
    broken[5] = float("nan")
    out = classifier_test_metrics("digits_mlp", "digits", torch.stack([flat, broken]))
    assert torch.isfinite(out["test_loss"][0]) and torch.isfinite(out["test_error"][0])
    assert out["test_loss"][1].isnan() and out["test_error"][1].isnan()


def test_files_that_cannot_be_measured_are_refused_in_one_line(tmp_path, capsys):
    layout = classifier_layout("digits_mlp")
    state = layout.unflatten(_network())
    bare = tmp_path / "bare.safetensors"  # no metadata (an older export, or the user's own code): known by its shapes
    save_file({k: v.contiguous() for k, v in state.items()}, str(bare))
    assert (read_classifier_file(bare).network, read_classifier_file(bare).dataset) == ("digits_mlp", "digits")
    unknown = tmp_path / "unknown.safetensors"  # no metadata and no task network's tensors
    save_file({k: v.contiguous() for k, v in list(state.items())[:2]}, str(unknown))
    with pytest.raises(ClassifierFileError, match="--dataset"):
        read_classifier_file(unknown)
    meta = classifier_metadata("digits_mlp", None)
    extra = tmp_path / "extra.safetensors"
    save_file({**{k: v.contiguous() for k, v in state.items()}, "head.weight": torch.zeros(2)}, str(extra), meta)
    with pytest.raises(ClassifierFileError, match="head.weight"):
        read_classifier_file(extra)
    wrong = tmp_path / "wrong.safetensors"
    first = layout.names[0]
    save_file({**{k: v.contiguous() for k, v in state.items()}, first: torch.zeros(3, 3)}, str(wrong), meta)
    with pytest.raises(ClassifierFileError, match="does not hold a digits_mlp"):
        read_classifier_file(wrong)
    batched = tmp_path / "batched.safetensors"  # every tensor with a leading axis: not one network, nor two
    save_file({k: v[None].contiguous() for k, v in state.items()}, str(batched), meta)
    with pytest.raises(ClassifierFileError, match=r"has shape \(1, 10, 64\), not \(10, 64\)"):
        read_classifier_file(batched)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ClassifierFileError, match="not a readable safetensors"):
        read_classifier_file(junk)
    policy = tmp_path / "policy.zip"  # an SB3 policy where a classifier belongs
    with zipfile.ZipFile(policy, "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(ClassifierFileError, match=r"is a zip \(an SB3 policy\?\), not a classifier"):
        read_classifier_file(policy)
    capsys.readouterr()
    assert main(["evaluate", str(bare)]) == 0
    assert main(["evaluate", str(unknown)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rl-gpt evaluate: error:") and "\n" not in err
    mnist = classifier_layout("mnist_mlp")
    no_root = export_safetensors(
        mnist,
        mnist.flatten(build_classifier("mnist_mlp").state_dict()),
        tmp_path / "m.safetensors",
        classifier_metadata("mnist_mlp", None),
    )
    assert main(["evaluate", str(no_root)]) == 2  # MNIST's files are needed and not named
    assert "is tested on mnist; pass --data-root DIR" in capsys.readouterr().err


def test_a_classifier_with_nan_weights_is_refused(tmp_path, capsys):
    state = {k: v.contiguous() for k, v in classifier_layout("digits_mlp").unflatten(_network()).items()}
    state["fc1.weight"][0, 3] = float("nan")  # written by other code: rl_gpt's export refuses NaN
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata=classifier_metadata("digits_mlp", None))
    with pytest.raises(ClassifierFileError, match="fc1.weight hold NaN or infinite weights"):
        read_classifier_file(path)
    assert main(["evaluate", str(path)]) == 2  # was: "test loss nan, test error nan%"
    assert "NaN or infinite" in capsys.readouterr().err


def test_a_batch_of_classifiers_is_not_exported_as_one_file(tmp_path):
    batch = torch.stack([_network(), _network()])  # (2, D): unflatten would write tensors of shape (2, ...)
    with pytest.raises(ValueError, match=r"one network \(760,\).*one file per network"):
        _export_digits(batch, tmp_path / "c.safetensors")
    assert not list(tmp_path.iterdir())
