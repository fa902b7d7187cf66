"""The device mesh: one named dimension per parallelizer, sized from the config and the world size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from automodel.errors import AutomodelError

#: Outermost first. Parallelizers are applied in the reverse order (innermost first), except ``pp``
#: (pipeline parallel, automodel-pp), applied first: it cuts this rank's stage out of the model, which
#: the others then parallelize.
DIM_ORDER = ("pp", "dp_replicate", "dp_shard", "ep", "cp", "tp")
#: Ranks that differ in these coordinates see different data. ``ep`` (expert parallel, automodel-moe) is
#: data parallel for everything but the experts: each rank routes its own tokens to the experts' owners.
DP_DIMS = ("dp_replicate", "dp_shard", "ep")


class MeshError(AutomodelError):
    def __init__(self, message: str, key: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.key, self.hint = key, hint


@dataclass
class MeshPlan:
    """Sizes per dimension, outermost first; every dimension named by a parallelizer is present."""

    sizes: dict[str, int]
    world_size: int

    @property
    def dp_size(self) -> int:
        out = 1
        for dim in DP_DIMS:
            out *= self.sizes.get(dim, 1)
        return out


def plan_mesh(dims: list[tuple[str, str, int | None]], world_size: int) -> MeshPlan:
    """Size the mesh. ``dims`` holds (config key, dim, size or None) per parallelizer."""
    seen: dict[str, str] = {}
    open_dim = None
    fixed = 1
    for key, dim, size in dims:
        if dim not in DIM_ORDER:
            raise MeshError(f"unknown mesh dimension '{dim}'", key, f"use one of {', '.join(DIM_ORDER)}")
        if dim in seen:
            raise MeshError(f"two parallelizers use the mesh dimension '{dim}' ({seen[dim]} and {key})", key)
        seen[dim] = key
        if size is None:
            if open_dim is not None:
                raise MeshError(
                    f"only one parallelizer may leave its size open; {seen[open_dim]} and {key} both do",
                    key,
                    "give one of them an explicit size",
                )
            open_dim = dim
        elif not isinstance(size, int) or size < 1:
            raise MeshError(f"size must be a positive integer, got {size!r}", f"{key}.size")
        else:
            fixed *= size
    if world_size % fixed:
        raise MeshError(
            f"the parallel sizes multiply to {fixed}, which does not divide the {world_size} processes",
            "parallel",
            f"make the sizes divide {world_size}, or change the number of processes (launcher)",
        )
    sizes = {dim: size for _, dim, size in dims}
    if open_dim is not None:
        sizes[open_dim] = world_size // fixed
    elif fixed != world_size:
        raise MeshError(
            f"the parallel sizes multiply to {fixed} but there are {world_size} processes",
            "parallel",
            "leave one size open (e.g. {name: fsdp2} without size) to take the remaining ranks",
        )
    return MeshPlan({d: sizes[d] for d in DIM_ORDER if d in sizes}, world_size)


@dataclass
class Layout:
    """The parallelizers of a run (built, in config order) and, once the world size is known, the mesh
    plan. Validation makes it once; the loop reuses it."""

    parallelizers: list[Any]
    plan: MeshPlan | None = None

    @property
    def innermost_first(self) -> list[Any]:
        """The order parallelizers are applied in: pp (the stage), then tp/cp, then dp_shard, then dp_replicate."""
        return sorted(self.parallelizers, key=lambda p: (p.dim != "pp", -DIM_ORDER.index(p.dim)))


def plan_layout(parallelizers: list[Any], world_size: int | None, names: list[str] | None = None) -> tuple[Layout, list[tuple[str, str, str | None]]]:
    """The layout of ``parallelizers`` (``parallel.<i>`` in config order) over ``world_size`` processes
    (None: not known yet), and (key, message, hint) for every rule it breaks. The rules live here:

    * a parallelizer that declares ``exclusive`` (a reason, e.g. DDP) shares the model with no other;
    * at most one parallelizer per mesh dimension, at most one open size, sizes that fit the world.

    A size left open becomes what the mesh gives it (models are then checked with it).
    """
    from automodel.contracts import Parallelizer, member

    names = names or [type(p).__name__ for p in parallelizers]
    layout = Layout(list(parallelizers))
    for i, p in enumerate(parallelizers):
        reason = member(p, Parallelizer, "exclusive")
        if reason and len(parallelizers) > 1:
            others = ", ".join(repr(n) for j, n in enumerate(names) if j != i)
            return layout, [(f"parallel.{i}", f"'{names[i]}' cannot be combined with {others}: {reason}", None)]
    if not world_size:
        return layout, []
    try:
        layout.plan = plan_mesh([(f"parallel.{i}", p.dim, p.size) for i, p in enumerate(parallelizers)], world_size)
    except MeshError as e:
        return layout, [(e.key or "parallel", str(e), e.hint)]
    for p in parallelizers:
        if p.size is None and p.dim in layout.plan.sizes:
            p.size = layout.plan.sizes[p.dim]
    return layout, []


def build_mesh(plan: MeshPlan, device_type: str) -> Any:
    """A ``torch.distributed.DeviceMesh`` with the planned named dimensions (needs a process group)."""
    from torch.distributed.device_mesh import init_device_mesh

    names = tuple(plan.sizes)
    return init_device_mesh(device_type, tuple(plan.sizes.values()), mesh_dim_names=names)


def dp_coordinates(mesh: Any, plan: MeshPlan) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size) of this process: ranks that differ only in pp/tp/cp
    coordinates see the same data."""
    if mesh is None:
        return 0, 1
    rank, size = 0, 1
    for dim in DP_DIMS:
        if dim in plan.sizes:
            rank = rank * plan.sizes[dim] + mesh.get_local_rank(dim)
            size *= plan.sizes[dim]
    return rank, size
