"""The one description of a network's parameters that every stage shares.

A :class:`Layout` lists parameters by name (the module's own ``state_dict`` keys), shape and
offset in the flat vector, and says which axes index *hidden units*: units that may be permuted
together without changing the function the network computes. Flattening, permutation
augmentation, tokenising, SB3 export and batched evaluation are all derived from it, so no other
module hard-codes a layer list.

Layers are described as a chain of affine maps (``Linear`` or ``Conv``): each layer reads a unit
group on its input axis and writes one on its output axis. Groups named ``None`` are the
network's fixed inputs/outputs; any other group is a hidden group, shared by the layer writing it
and every layer reading it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["LayerSpec", "Layout", "ParamSpec"]


@dataclass(frozen=True)
class ParamSpec:
    """One named parameter tensor and where it sits in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    #: (axis, hidden group) pairs: permuting that group permutes this tensor along that axis.
    perm_axes: tuple[tuple[int, str], ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class LayerSpec:
    """An affine layer: ``prefix.weight`` (out, in, *kernel) and optional ``prefix.bias`` (out,)."""

    prefix: str
    in_group: str | None
    out_group: str | None
    activation: str | None = None  # applied after this layer by the network's forward pass


@dataclass(frozen=True)
class Layout:
    """Ordered parameters, their hidden-unit groups and the affine layer chain they form."""

    params: tuple[ParamSpec, ...]
    layers: tuple[LayerSpec, ...] = ()
    groups: Mapping[str, int] = field(default_factory=dict)  # hidden group -> number of units

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        shapes: Mapping[str, Iterable[int]] | Mapping[str, torch.Tensor],
        layers: Iterable[LayerSpec] = (),
        names: Iterable[str] | None = None,
    ) -> Layout:
        """Build a layout from ``{name: shape or tensor}`` and the affine layer chain.

        ``names`` selects and orders the parameters (default: the mapping's order). Parameters that
        belong to no layer (e.g. PPO's ``log_std``) are kept with no permutable axis.
        """
        shape_of = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in shapes.items()}
        order = list(names) if names is not None else list(shape_of)
        _refuse_repeats(order)
        _refuse_empty(order)
        missing = [n for n in order if n not in shape_of]
        if missing:
            raise KeyError(f"layout names not among the parameters: {missing}")
        layers = tuple(layers)
        axes: dict[str, list[tuple[int, str]]] = {n: [] for n in order}
        groups: dict[str, int] = {}

        def claim(name: str, axis: int, group: str | None) -> None:
            if group is None or name not in axes:
                return
            size = shape_of[name][axis]
            if groups.setdefault(group, size) != size:
                raise ValueError(f"hidden group {group!r} has size {groups[group]} but {name} axis {axis} has {size}")
            axes[name].append((axis, group))

        for layer in layers:
            weight, bias = f"{layer.prefix}.weight", f"{layer.prefix}.bias"
            if weight not in shape_of:
                raise KeyError(f"layer {layer.prefix!r} has no parameter {weight!r}")
            claim(weight, 0, layer.out_group)
            claim(weight, 1, layer.in_group)
            if bias in shape_of:
                claim(bias, 0, layer.out_group)
        params, offset = [], 0
        for name in order:
            spec = ParamSpec(name, shape_of[name], offset, tuple(sorted(axes[name])))
            params.append(spec)
            offset = spec.stop
        return cls(tuple(params), layers, groups)

    # ------------------------------------------------------------------ basic facts
    @property
    def numel(self) -> int:
        return self.params[-1].stop if self.params else 0

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(p.name == name for p in self.params)

    # ------------------------------------------------------------------ flatten / unflatten
    def flatten(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``state``'s tensors (shape (*batch, *param_shape)) into (*batch, D)."""
        parts = []
        for p in self.params:
            if p.name not in state:
                raise KeyError(f"parameter {p.name!r} missing from the state dict")
            t = state[p.name]
            batch = t.shape[: t.dim() - len(p.shape)]
            if tuple(t.shape[len(batch) :]) != p.shape:
                raise ValueError(f"{p.name}: expected shape {p.shape}, got {tuple(t.shape[len(batch) :])}")
            parts.append(t.reshape(*batch, p.numel))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split (*batch, D) into ``{name: (*batch, *shape)}`` views."""
        if flat.shape[-1] != self.numel:
            raise ValueError(f"flat vector has {flat.shape[-1]} entries, the layout {self.numel}")
        batch = flat.shape[:-1]
        return {p.name: flat[..., p.offset : p.stop].reshape((*batch, *p.shape)) for p in self.params}

    # ------------------------------------------------------------------ permutation symmetry
    def random_permutations(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """One random permutation per hidden group and batch row: ``{group: (batch, units)}``."""
        return {
            g: torch.argsort(torch.rand(batch, n, generator=generator), dim=-1).to(device)
            for g, n in self.groups.items()
        }

    def permute(self, flat: torch.Tensor, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Permute hidden units of a batch (B, D) with ``perms[group]`` (B, units).

        Unit ``i`` of the result is unit ``perms[g][b, i]`` of the input, on every axis that group
        indexes, so the network's function is unchanged.
        """
        if flat.dim() != 2:
            raise ValueError(f"permute expects (B, D), got {tuple(flat.shape)}")
        return flat.gather(1, self.permutation_index(perms, flat.shape[0], flat.device))

    def permutation_index(
        self, perms: Mapping[str, torch.Tensor], batch: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The (B, D) gather index that applies ``perms`` to flat vectors."""
        pieces = []
        for p in self.params:
            idx = torch.arange(p.numel, device=device).reshape(p.shape).expand(batch, *p.shape)
            for axis, group in p.perm_axes:
                perm = perms[group].to(device)  # (B, units)
                view = [batch] + [1] * len(p.shape)
                view[axis + 1] = perm.shape[1]
                idx = idx.gather(axis + 1, perm.reshape(view).expand_as(idx))
            pieces.append(idx.reshape(batch, p.numel) + p.offset)
        return torch.cat(pieces, dim=1)

    def unit_index(self, group: str) -> torch.Tensor:
        """(units, k) flat indices of everything attached to each unit of ``group``.

        Row ``j`` lists unit ``j``'s incoming weights, bias and outgoing weights in layout order:
        the natural token of a permutation-equivariant model.
        """
        rows = []
        for p in self.params:
            for axis, g in p.perm_axes:
                if g != group:
                    continue
                idx = torch.arange(p.numel).reshape(p.shape).movedim(axis, 0)
                rows.append(idx.reshape(idx.shape[0], -1) + p.offset)
        if not rows:
            raise KeyError(f"no hidden group {group!r}; groups are {list(self.groups)}")
        return torch.cat(rows, dim=1)

    def fixed_index(self) -> torch.Tensor:
        """Flat indices that belong to no hidden unit (output biases, ``log_std``, ...)."""
        covered = torch.zeros(self.numel, dtype=torch.bool)
        for g in self.groups:
            covered[self.unit_index(g).flatten()] = True
        return torch.nonzero(~covered).flatten()

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "numel": self.numel,
            "params": [
                {
                    "name": p.name,
                    "shape": list(p.shape),
                    "offset": p.offset,
                    "perm_axes": [list(a) for a in p.perm_axes],
                }
                for p in self.params
            ],
            "layers": [
                {"prefix": l.prefix, "in_group": l.in_group, "out_group": l.out_group, "activation": l.activation}
                for l in self.layers
            ],
            "groups": dict(self.groups),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Layout:
        params = tuple(
            ParamSpec(
                p["name"], tuple(p["shape"]), int(p["offset"]), tuple((int(a), str(g)) for a, g in p["perm_axes"])
            )
            for p in data["params"]
        )
        layers = tuple(
            LayerSpec(l["prefix"], l["in_group"], l["out_group"], l.get("activation")) for l in data["layers"]
        )
        _refuse_repeats([p.name for p in params])
        _refuse_empty([p.name for p in params])
        layout = cls(params, layers, dict(data["groups"]))
        stop = 0
        for p in layout.params:  # the pieces tile the flat vector, in the order listed (flatten's order)
            if p.offset != stop:
                raise ValueError(f"{p.name} starts at offset {p.offset}, not where the one before it ends ({stop})")
            stop = p.stop
        if "numel" in data and int(data["numel"]) != layout.numel:
            raise ValueError(f"layout says numel={data['numel']} but its parameters add up to {layout.numel}")
        return layout

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Layout:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        # the groups' order too: the neuron tokeniser numbers token types by it, so a model of one order
        # computes another function on the other (and the hash, of the JSON, already tells them apart)
        return (
            isinstance(other, Layout)
            and self.to_dict() == other.to_dict()
            and list(self.groups.items()) == list(other.groups.items())
        )

    def __hash__(self) -> int:
        return hash(self.to_json())


def _refuse_empty(names: list[str]) -> None:
    """A network without parameters has nothing to generate; every later stage would fail less clearly."""
    if not names:
        raise ValueError("a layout needs at least one parameter, and this one has none")


def _refuse_repeats(names: list[str]) -> None:
    """Two parameters of one name would share a flat slice's name: flatten and unflatten disagree."""
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"a layout names each parameter once; repeated: {repeated}")
