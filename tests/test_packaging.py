"""The installed package, not the checkout: a built wheel carries the presets and the batched envs.

The checkout keeps ``configs/`` and ``envs/`` at its top level; installed, they are ``rl_gpt/configs``
(pyproject maps the folder) and ``rl_gpt.envs`` (``rl_gpt/envs`` links to ``../envs``). Every other
test runs from the checkout, where a missing mapping does not show: a wheel once shipped no preset at
all, and its top-level ``envs`` lost to any ``envs/`` folder in a user's working directory. The sdist
once held the test files without ``conftest.py`` and the helpers they import, so no test ran from it.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli, the same parser
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_of_the_checkout_is_listed_for_the_wheel() -> None:
    listed = set(_setuptools()["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rl_gpt").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
    assert _setuptools()["package-dir"] == {"rl_gpt.configs": "configs"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if _is_source(p, folder)}


def _is_source(path: Path, root: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.relative_to(root).parts and path.suffix != ".pyc"


def test_rl_gpt_envs_is_this_checkouts_envs_folder() -> None:
    """rl_gpt/envs links to the top-level envs/: a checkout, installed or on PYTHONPATH, imports its own.
    An sdist keeps no links (setuptools stores the files a link points to), so unpacked it holds a copy."""
    import rl_gpt.envs

    link = ROOT / "rl_gpt" / "envs"
    if link.is_symlink() or (ROOT / ".git").exists():
        assert link.is_symlink() and os.readlink(link) == "../envs"
    else:  # an unpacked sdist
        assert _files(link) == _files(ROOT / "envs")
    assert Path(rl_gpt.envs.__file__).resolve().parent == link.resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_setuptools()
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    # A build folder of its own: setuptools' default, build/ in the checkout, would be left behind there.
    env = {**os.environ, "PIP_NO_INPUT": "1", "DIST_EXTRA_CONFIG": str(_build_config(out))}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return next(out.glob("rl_gpt-*.whl"))


def _require_setuptools() -> None:
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building offline needs setuptools>=77 in this environment (pyproject's build requirement)")


def _build_config(out: Path) -> Path:
    config = out / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {out / 'build'}\n[egg_info]\negg_base = {out}\n")
    return config


def test_the_wheel_holds_every_preset_and_the_envs_inside_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    presets = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {Path(n).name for n in names if n.startswith("rl_gpt/configs/")} == presets
    envs = {p.name for p in (ROOT / "envs").glob("*.py")}
    assert {Path(n).name for n in names if n.startswith("rl_gpt/envs/")} == envs
    assert not [n for n in names if n.split("/")[0] in ("envs", "configs", "tests", "scripts")]


def test_the_installed_package_finds_its_presets_and_envs_beside_a_users_own_folders(wheel, tmp_path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    project = tmp_path / "project"  # a user's folder with envs/ and configs/ of their own
    (project / "envs").mkdir(parents=True)
    (project / "envs" / "__init__.py").write_text("MINE = True\n")
    (project / "configs").mkdir()
    (project / "configs" / "default.yaml").write_text("model: {}\n")
    code = (
        "import rl_gpt, rl_gpt.evaluate.rollout, rl_gpt.envs\n"
        "from rl_gpt.config import PRESETS, load_config\n"
        "assert load_config('digits').task.network == 'digits_mlp', 'digits'\n"
        "assert load_config('mnist').task.env_id == 'mnist', 'mnist extends digits'\n"
        "print(rl_gpt.__file__, rl_gpt.envs.__file__, PRESETS, sep='\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(site)])}
    cmd = [sys.executable, "-c", code]
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    package, envs, presets = done.stdout.split()
    assert Path(package).parent == site / "rl_gpt"
    assert Path(envs).parent == site / "rl_gpt" / "envs"  # not the user's envs/
    assert Path(presets) == site / "rl_gpt" / "configs"


def test_the_sdist_holds_what_its_tests_and_makefile_need(tmp_path: Path) -> None:
    """The sdist is a release that can be tested: every file of tests/ (conftest.py and the helpers
    included), and of what they and the Makefile read."""
    _require_setuptools()
    out = tmp_path / "sdist"
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(_build_config(out))}  # its egg-info outside the checkout too
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    with tarfile.open(out / done.stdout.split()[-1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    wanted = {"Makefile", "README.md", "LICENSE", "pyproject.toml", "rl_gpt/py.typed"}
    for folder in ("tests", "scripts", "docs", "envs", "configs"):
        wanted |= {f"{folder}/{name}" for name in _files(ROOT / folder)}
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"
    assert not [n for n in names if n.startswith(("runs/", ".venv/")) or "__pycache__" in n]


def test_the_wheels_metadata_says_what_the_package_holds(wheel: Path) -> None:
    """The classifiers start at requires-python's lowest version, ``Typing :: Typed`` goes with the shipped
    py.typed, and the ``rl-gpt`` command and the extras the README installs are declared."""
    archive = zipfile.ZipFile(wheel)
    info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    lowest = metadata["Requires-Python"].removeprefix(">=")
    pythons = [c.rsplit(" :: ", 1)[1] for c in metadata.get_all("Classifier") if c.count(" :: ") == 2]
    pythons = sorted((p for p in pythons if p[0].isdigit()), key=lambda v: tuple(map(int, v.split("."))))
    assert pythons and pythons[0] == lowest, (pythons, lowest)
    assert "Typing :: Typed" in metadata.get_all("Classifier") and "rl_gpt/py.typed" in archive.namelist()
    assert set(metadata.get_all("Provides-Extra")) == {"ray", "dev"}
    assert "rl-gpt = rl_gpt.cli:console_main" in archive.read(f"{info}/entry_points.txt").decode()
