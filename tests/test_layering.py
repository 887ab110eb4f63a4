"""The rooms of docs/architecture.md depend one way: checked statically (lazy imports included) and on import."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rl_gpt"
ENVS = PACKAGE.parent / "envs"  # the checkout's top-level envs/, installed as rl_gpt.envs

# Which rooms each room may import directly (docs/architecture.md's "imports" column); a room may
# always import itself. Imports inside functions count too: a lazy import is still an edge.
ALLOWED: dict[str, set[str]] = {
    "envs": set(),
    "layout": set(),
    "config": set(),
    "io": set(),
    "env_modules": set(),
    "threads": set(),
    "interrupt": set(),
    "progress": set(),
    "wandb_run": {"config", "io"},
    "devices": {"config"},
    "sb3_policy": {"layout"},
    "dataset": {"layout", "io"},
    "supervised": {"layout", "config", "io", "threads", "progress"},
    "evaluate": {"envs", "env_modules", "layout", "sb3_policy", "dataset", "supervised", "threads"},
    "collect": {
        *("config", "dataset", "evaluate", "supervised", "layout", "sb3_policy"),
        *("io", "wandb_run", "progress", "interrupt", "env_modules"),
    },
    "model": {"layout"},
    "diffusion": {"progress"},
    "train": {
        *("model", "diffusion", "dataset", "devices", "evaluate", "supervised"),
        *("layout", "config", "io", "wandb_run", "progress", "interrupt"),
    },
    "sweep": {
        *("train", "evaluate", "supervised", "collect", "devices", "envs"),
        *("dataset", "layout", "sb3_policy", "config", "io", "threads", "wandb_run", "env_modules"),
    },
    "generate": {"train", "evaluate", "collect", "supervised", "dataset", "layout", "sb3_policy", "config", "io"},
}
ENTRY_POINTS = {"demo", "cli", "cli_parser", "cli_data", "cli_info"}  # may import everything


def _room(path: Path) -> str:
    return "envs" if path.parent == ENVS else path.relative_to(PACKAGE).with_suffix("").parts[0]


def _modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *ENVS.glob("*.py")])


def _imported_rooms(path: Path) -> set[str]:
    """Rooms of ours that ``path`` imports anywhere in the file, at module level or inside functions."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:  # resolve against this module's package
            package = ("rl_gpt", "envs") if path.parent == ENVS else path.relative_to(PACKAGE.parent).parts[:-1]
            base = ".".join(package[: len(package) - (node.level - 1)])
            names = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"rl_gpt.{a.name}" for a in node.names] if node.module == "rl_gpt" else [node.module]
        else:
            continue
        rooms |= {name.split(".")[1] for name in names if name.startswith("rl_gpt.")}
    return rooms


def test_every_room_imports_only_the_rooms_below_it() -> None:
    bad = []
    for path in _modules():
        room = _room(path)
        if room in ENTRY_POINTS or room == "__init__":
            continue
        where = path.relative_to(PACKAGE.parent)
        assert room in ALLOWED, f"{where}: a new room; add it to ALLOWED and docs/architecture.md"
        above = _imported_rooms(path) - ALLOWED[room] - {room}
        bad += [f"{where} imports rl_gpt.{r}" for r in sorted(above)]
    assert not bad, "imports against docs/architecture.md's layering:\n" + "\n".join(bad)


def _documented_imports() -> dict[str, set[str]]:
    """docs/architecture.md's table: each room's "imports" column as room names (parenthesised words
    are reasons, not rooms)."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rooms = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith(("`rl_gpt/", "`envs/`")):
            continue
        names = {
            p.removeprefix("rl_gpt/").split("/")[0].removesuffix(".py") for p in re.findall(r"`([^`]+)`", cells[0])
        }
        words = set(re.findall(r"[a-z_0-9]+", re.sub(r"\([^)]*\)", "", cells[2])))
        unknown = words - set(ALLOWED) - ENTRY_POINTS - {"nothing", "everything"}
        assert not unknown, f"docs/architecture.md names no such room: {sorted(unknown)} (in {cells[0]})"
        for name in names:
            rooms[name] = words & (set(ALLOWED) | ENTRY_POINTS)
    return rooms


# Edges the doc narrows with a reason in parentheses, and the modules of the lower room they may use:
# the backticked names in that reason, which must be these. A use beyond them needs both changed.
NARROW_EDGES: dict[tuple[str, str], set[str]] = {
    ("sweep", "collect"): {"inits"},
    ("generate", "collect"): {"inits", "sb3_run"},
    ("train", "supervised"): {"data", "data_root", "evaluate"},
    ("evaluate", "supervised"): {"data", "data_root", "files", "metric"},
    ("generate", "supervised"): {"files", "metric"},
}


def _imported_modules(path: Path) -> set[str]:
    """``rl_gpt.<room>.<module>`` (or ``rl_gpt.<room>`` for the package itself) for every import of ours in
    ``path``: ``from rl_gpt import room`` is the package, ``from rl_gpt.room import module`` the module
    where ``module`` is one, and relative imports are resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                package = ("rl_gpt", "envs") if path.parent == ENVS else path.relative_to(PACKAGE.parent).parts[:-1]
                base = ".".join(package[: len(package) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            parts = module.split(".")
            if module == "rl_gpt":
                names = [f"rl_gpt.{a.name}" for a in node.names]
            elif parts[0] == "rl_gpt" and len(parts) == 2:  # from rl_gpt.room import x: x may be a module
                folder = PACKAGE / parts[1]
                names = [f"{module}.{a.name}" if (folder / f"{a.name}.py").is_file() else module for a in node.names]
            else:
                names = [module]
        else:
            continue
        found |= {".".join(n.split(".")[:3]) for n in names if n.startswith("rl_gpt.")}
    return found


def test_narrowed_edges_use_only_the_modules_their_reason_names() -> None:
    beyond = []
    for path in _modules():
        room = _room(path)
        for name in sorted(_imported_modules(path)):
            parts = name.split(".")
            if (room, parts[1]) in NARROW_EDGES and (len(parts) < 3 or parts[2] not in NARROW_EDGES[room, parts[1]]):
                beyond.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not beyond, "beyond what docs/architecture.md's reasons name:\n" + "\n".join(beyond)
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for (room, lower), modules in NARROW_EDGES.items():
        row = next(
            line for line in doc.splitlines() if line.startswith((f"| `rl_gpt/{room}/`", f"| `rl_gpt/{room}.py`"))
        )
        reason = re.search(rf"\b{lower} \(([^)]*)\)", row.split("|")[3])
        assert reason, f"docs/architecture.md gives {room} -> {lower} no reason in parentheses"
        assert set(re.findall(r"`([a-z_0-9]+)`", reason.group(1))) == modules, (room, lower, reason.group(1))


def test_the_architecture_doc_names_exactly_the_imports_the_test_allows() -> None:
    documented = _documented_imports()
    assert set(documented) == set(ALLOWED) | ENTRY_POINTS, "rooms missing from or extra in docs/architecture.md"
    differ = {room: (documented[room], allowed) for room, allowed in ALLOWED.items() if documented[room] != allowed}
    assert not differ, f"docs/architecture.md's imports column against ALLOWED: {differ}"


# A fresh interpreter per module: catches import cycles that only show in one import order, and
# checks what importing a room actually loads (the static test above reads files, not packages).
@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("rl_gpt.supervised", {"evaluate", "collect", "train", "sweep", "generate"}),
        ("rl_gpt.evaluate.dataset_metric", {"collect", "model", "diffusion", "train", "sweep", "generate"}),
        ("rl_gpt.train.probe", {"collect", "sweep", "generate"}),
        ("rl_gpt.collect.executor", {"train", "sweep", "generate"}),
        ("rl_gpt.sweep.run", {"generate", "demo", "cli"}),
        ("rl_gpt.generate.run", {"sweep", "demo", "cli"}),
    ],
)
def test_importing_a_room_loads_no_room_above_it(module: str, forbidden: set[str]) -> None:
    code = (
        f"import sys, {module}\n"
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('rl_gpt.')})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert not loaded & forbidden, f"importing {module} loads rl_gpt.{{{', '.join(sorted(loaded & forbidden))}}}"


def _declared_all(path: Path) -> set[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def test_what_one_module_imports_from_another_is_in_its_all():
    """``__all__`` is a module's API as a reader sees it: a public name other modules import is listed."""
    declared = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names = _declared_all(path)
        if names is not None:
            declared[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (path, names)
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in declared:
                module_path, names = declared[node.module]
                for alias in node.names:
                    name = alias.name
                    submodule = module_path.parent / name if module_path.name == "__init__.py" else None
                    if name.startswith("_") or name in names or (submodule and submodule.with_suffix(".py").exists()):
                        continue
                    missing.append(f"{node.module}.{name} (imported by {path.relative_to(PACKAGE.parent)})")
    assert not missing, "add to __all__: " + ", ".join(sorted(set(missing)))
