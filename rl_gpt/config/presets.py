"""Config files: the presets shipped with rl_gpt, and ``extends:`` chains of YAML files merged over them."""

from __future__ import annotations

import copy
import os
import re
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from .schema import ConfigError, TaskConfig


def _presets_folder() -> Path:
    """The presets: ``rl_gpt/configs`` when installed (pyproject maps the checkout's top-level ``configs/``
    there), the checkout's ``configs/`` in an editable install or a clone."""
    package = Path(__file__).resolve().parent.parent  # rl_gpt/
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


PRESETS = _presets_folder()


_MOST_ALIASED_VALUES = 100_000


def _values_in(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes a YAML node stands for once its aliases are expanded (``sizes``: those already counted)."""
    if id(node) not in sizes:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        sizes[id(node)] = 1 + sum(_values_in(child, sizes) for child in children)
    return sizes[id(node)]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names a key twice (:meth:`_PlainLoader.flatten_mapping`)."""


class _PlainLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a file whose aliases repeat more than ``_MOST_ALIASED_VALUES``
    values: nine lines of nested ``*a`` aliases ("a billion laughs") stand for billions of values once
    anything walks them, which the config checks do. Aliases and merge keys (``<<: *base``) of config
    size read as before."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliased = 0  # values the aliases so far stand for
        self._sizes: dict[int, int] = {}  # each anchored node's, counted once
        self._checked: set[int] = set()  # mapping nodes checked for a key given twice (flatten_mapping)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._aliased += _values_in(target, self._sizes)
                if self._aliased > _MOST_ALIASED_VALUES:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"its aliases (*{event.anchor} and the ones before) repeat more than "
                        f"{_MOST_ALIASED_VALUES:,} values; write them out",
                        event.start_mark,
                    )
        return super().compose_node(parent, index)

    def flatten_mapping(self, node: Any) -> None:
        """A mapping that names a key twice is refused: YAML keeps the last silently, so ``steps: 3`` and a
        later ``steps: 5`` in one section trained 5 steps without a word (OmegaConf refuses it too). Keys a
        merge key (``<<: *base``) brings in may still be set again, as YAML means them to be.

        Checked here, once per node, before the node is flattened: flattening puts a merge key's pairs into
        the node's own, so an anchored mapping flattened as another's merge source before it is built
        itself would otherwise read as naming the keys it overrides twice."""
        if isinstance(node, yaml.MappingNode) and id(node) not in self._checked:
            self._checked.add(id(node))
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise DuplicateKeyError(
                        "while reading a mapping",
                        node.start_mark,
                        f"{key!r} is given twice in one section (YAML would keep the last silently); keep one",
                        key_node.start_mark,
                    )
                if isinstance(key, typing.Hashable):
                    seen.add(key)
        super().flatten_mapping(node)


def parse_yaml(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, refusing aliases that repeat too much (:class:`_PlainLoader`)."""
    return yaml.load(text, Loader=_PlainLoader)  # a SafeLoader: builds plain values only


def load_yaml_file(path: Path) -> Any:
    """A YAML file's contents; a :class:`ConfigError` naming the line where it is not valid YAML."""
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # where the parser stopped (0-based), if it knows
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML ({where}{problem}); fix the file") from None


def find_preset(name_or_path: str) -> Path:
    """A config file path, or the name of a preset in ``configs/`` (``cartpole`` → configs/cartpole.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    # a path without its suffix (sub/my), as extends: takes it; a bare name stays a preset's, not a local file's
    # (not a folder's: `./`, `/` or `sub/` name no file, and `sub/` must not find sub.yaml)
    folder = name_or_path.endswith(("/", os.sep)) or not path.name
    if ("/" in name_or_path or os.sep in name_or_path) and not folder and path.with_name(f"{path.name}.yaml").is_file():
        return path.with_name(f"{path.name}.yaml")
    bare = "/" not in name_or_path and os.sep not in name_or_path and not folder
    local = Path(f"{name_or_path}.yaml") if bare and not name_or_path.endswith((".yaml", ".yml")) else None
    for candidate in (PRESETS / f"{name_or_path}.yaml", PRESETS / name_or_path):
        if candidate.is_file():
            return candidate
    if local is not None and local.is_file():
        raise ConfigError(f"no preset {name_or_path!r}; a file is named by its path: ./{local}")
    known = sorted(p.stem for p in PRESETS.glob("*.yaml")) if PRESETS.is_dir() else []
    for_env = {name: _preset_env_id(name) for name in known}
    for_env = {name: env for name, env in for_env.items() if env.casefold() == name_or_path.casefold()}
    hint = "".join(f"did you mean {name}, the preset for {env}? " for name, env in for_env.items())
    if not hint and bare and (":" in name_or_path or re.search(r"-v\d+$", name_or_path)):  # an env id, not a config
        hint = f"{name_or_path} looks like an env id: give a preset and task.env_id={name_or_path} (e.g. cartpole). "
    raise ConfigError(f"no config file or preset {name_or_path!r}; {hint}presets: {', '.join(known) or 'none found'}")


def _preset_env_id(name: str) -> str:
    """The ``task.env_id`` a preset names itself (not one it extends), else ""; `collect Pendulum-v1` finds pendulum."""
    try:
        task = load_yaml_file(PRESETS / f"{name}.yaml").get("task")
    except (ConfigError, AttributeError):
        return ""
    return str(task.get("env_id", "")) if isinstance(task, dict) else ""


def read_preset(source: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file's sections; ``extends: NAME`` starts from that preset and deep-merges this file over it."""
    path = find_preset(source)
    local = Path(f"{source}.yaml")
    if not seen and path.parent == PRESETS and os.sep not in source and "/" not in source and local.is_file():
        # the preset wins (a bare name never runs a local file); said, as the user may have meant theirs.
        # Only for the name given on the command line: a local file's own `extends: cartpole` means the preset.
        warnings.warn(
            f"{source!r} is the preset {path.name}, not ./{local} in this folder: give ./{local} for that file",
            stacklevel=2,
        )
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in seen)})")
    loaded = load_yaml_file(path)
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    data = loaded or {}
    base = data.pop("extends", None)
    if base is None:
        return _deep_merge(_inherited_defaults({}, data), data)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' names one preset or file, got {base!r}")
    chain = read_preset(str(_base_preset(path, base)), (*seen, path.resolve()))
    merged = _deep_merge(_inherited_defaults(chain, data), data)
    top_task = data.get("task") if isinstance(data.get("task"), dict) else {}
    base_task = chain.get("task") if isinstance(chain.get("task"), dict) else {}
    warn_if_env_outgrows_task(base_task, merged.get("task"), {f"task.{k}" for k in top_task}, by=str(path))
    return merged


def _inherited_defaults(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the embedded default's ``task.hyperparams`` / ``task.policy_kwargs`` written out
    where ``top`` (a file over it) sets some of their keys and ``base`` leaves them at that default.

    The file then changes only what it names, as a ``task.hyperparams.X=`` override does: a file that
    extends ``cartpole`` with ``hyperparams: {ent_coef: 0.001}`` kept that one key and trained with SB3's
    defaults for the rest. Only for the default's own task (PPO on CartPole-v1): another environment's
    file spells out its own values, which CartPole's must not fill in.
    """
    top_task, base_task = top.get("task"), base.get("task") if isinstance(base.get("task"), dict) else {}
    if not isinstance(top_task, dict):
        return base
    default = TaskConfig()
    final = {"kind": default.kind, "algo": default.algo, "env_id": default.env_id} | {
        k: v for k, v in (base_task | top_task).items() if k in ("kind", "algo", "env_id")
    }
    if (final["kind"], final["algo"], final["env_id"]) != (default.kind, default.algo, default.env_id):
        return base
    seeded = {
        name: copy.deepcopy(getattr(default, name))
        for name in ("hyperparams", "policy_kwargs")
        if isinstance(top_task.get(name), dict) and name not in base_task
    }
    return base | {"task": base_task | seeded} if seeded else base


def _base_preset(path: Path, base: str) -> Path:
    """What ``extends: base`` in ``path`` names: a file beside ``path`` (``.yaml`` may be left out), else a preset."""
    for candidate in (path.parent / base, path.parent / f"{base}.yaml", PRESETS / f"{base}.yaml", PRESETS / base):
        # a copied preset that extends the preset of its name (cartpole.yaml: extends: cartpole) means the preset
        if candidate.is_file() and candidate.resolve() != path.resolve():
            return candidate
    raise ConfigError(f"{path}: 'extends: {base}' names no file beside it and no preset in {PRESETS}")


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(out.get(key), dict) and value is None:  # an empty section keeps the base's
            continue
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both_dicts else value
    return out


def warn_if_env_outgrows_task(preset: dict[str, Any], task: Any, overridden: set[str], by: str = "") -> None:
    """A preset's ``task.env_id`` replaced (on the command line, or by a file that extends it) keeps the
    preset's return range and threshold, which belong to the preset's environment (CartPole's [0, 500]
    on Pendulum, or on CartPole-v0, whose episodes end at 200): say so. ``overridden``: the dotted keys
    set over the preset; ``by``: the file that set them, for the message (the command line if empty)."""
    if not isinstance(task, dict) or "task.env_id" not in overridden:
        return
    new, old = task.get("env_id"), preset.get("env_id")
    if new == old or not isinstance(new, str) or not isinstance(old, str):
        return
    import gymnasium

    # An unknown id is refused by collect with a hint (warning first would bury it); a module:EnvId is
    # registered only once its module is imported, which the config layer never does: it warns as it is.
    if ":" not in new and new not in gymnasium.registry:
        return
    if old in gymnasium.registry and new.rsplit("-v", 1)[0] == old.rsplit("-v", 1)[0]:
        a, b = gymnasium.spec(new), gymnasium.spec(old)
        if (a.max_episode_steps, a.reward_threshold) == (b.max_episode_steps, b.reward_threshold):
            return  # another version of the same task: the same range and threshold
    kept = [
        f"task.{key}={preset[key]}"
        for key in ("metric_range", "reward_threshold")
        if preset.get(key) is not None and f"task.{key}" not in overridden and "task" not in overridden
    ]
    if kept:
        where = f" ({by})" if by else ""
        warnings.warn(
            f"task.env_id={new}{where} replaces the preset's {old} but keeps its "
            f"{' and '.join(kept)}; set them for the new environment (null: the collected range, no threshold), "
            "or start from a preset for it",
            stacklevel=3,
        )
