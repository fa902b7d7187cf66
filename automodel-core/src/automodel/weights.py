"""Weights of a model built on the meta device: materialize after sharding, load only this rank's
slices of the pretrained safetensors, or initialize the same values for any sharding.

Public API for plugins: :func:`unwrap`, :func:`materialize`, :func:`checkpoint_key`,
:func:`full_size`, :func:`load_safetensors`, :func:`init_weights`. The core's loop and the builtin
loader use it; plugins (LoRA, TP, FP8) import it from here, never from ``automodel.builtin``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from automodel.contracts import Transform, member
from automodel.errors import AutomodelError


def materialize(model: Any, ctx: Any, transforms: Sequence[Any] = (), param_device: Any = None) -> None:
    """Give meta-device parameters real storage on ``ctx.device`` and load the weights named by
    ``model.config.name_or_path`` (or initialize them) — after the parallelizers have sharded them.

    Sharded (DTensor) parameters get storage for this rank's shard only. Pretrained weights are read
    with ``torch.distributed.checkpoint`` from the safetensors files: each rank reads only the slices
    it owns, so peak host memory per rank falls with the number of shards. Without pretrained weights,
    each module is initialized at full size in module order (the same random stream as an unsharded
    model) and only the local shard is kept.

    ``param_device`` is where parameters get storage (a parallelizer's ``param_device``, e.g. ``"cpu"``
    for FSDP2 CPU offload; default ``ctx.device``). ``transforms`` (those applied to the model) may rename weights and add new ones: a transform's
    ``checkpoint_key(name)`` maps a weight's name to its name in the pretrained files (``None``: not in
    the files), and its ``init_weights(model, full_size)`` then initializes the weights the files do not
    hold (see ``register_model_transforms``).
    """
    if not any(p.is_meta for p in model.parameters()):
        return
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if not b.is_meta}
    # Parameters where the parallelizer wants them (``param_device``: host memory under CPU offload);
    # buffers on the compute device.
    model.to_empty(device=param_device or ctx.device)
    for name, value in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = value.to(ctx.device)
    base = unwrap(model)
    if hasattr(base, "tie_weights"):
        base.tie_weights()
    key = checkpoint_key(transforms)
    initializers = [t for t in transforms if member(t, Transform, "init_weights") is not None]
    new = [name for name, _ in base.named_parameters() if key(name) is None]
    if new and not initializers:
        raise AutomodelError(
            f"model: {len(new)} weights are in no pretrained file and no transform initializes them "
            f"(e.g. {', '.join(new[:3])}); set meta_init: false on the parallelizer"
        )
    source = getattr(base.config, "name_or_path", "")
    if source:
        load_safetensors(model, _weights_dir(source), key)
    else:
        init_weights(base, ctx.config.get("seed", 0), key)
    for t in initializers:
        t.init_weights(base, full_size)


def checkpoint_key(transforms: Sequence[Any]) -> Callable[[str], str | None]:
    """The name a weight of the transformed model has in the pretrained files (``None``: in none),
    through every transform's optional ``checkpoint_key``, the last transform applied first."""
    mappers = [m for t in reversed(transforms) if (m := member(t, Transform, "checkpoint_key")) is not None]

    def key(name: str) -> str | None:
        for m in mappers:
            name = m(name)
            if name is None:
                return None
        return name

    return key


@contextmanager
def full_size(*modules: Any) -> Iterator[None]:
    """Inside the block the parameters of ``modules`` (and their submodules) are ordinary full-size
    tensors: sharded (DTensor) ones gathered, which is a collective, so every rank must enter with the
    same modules in the same order. On exit each sharded parameter keeps this rank's slice of the
    full-size value (a parameter the block replaced is read by name). An initialization seeded the same
    on every rank therefore gives the same values for any sharding. Runs under ``torch.no_grad()``."""
    import torch

    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # pragma: no cover
        DTensor = ()  # type: ignore[assignment,misc]

    swapped: dict[tuple[int, str], tuple[Any, str, Any]] = {}
    full: dict[int, Any] = {}  # id of a sharded parameter -> its whole value (shared parameters: once)
    with torch.no_grad():
        for module in modules:
            for sub in module.modules():
                for name, p in list(sub._parameters.items()):
                    if isinstance(p, DTensor) and (id(sub), name) not in swapped:
                        if id(p) not in full:
                            full[id(p)] = torch.nn.Parameter(p.full_tensor(), p.requires_grad)
                        sub._parameters[name] = full[id(p)]
                        swapped[id(sub), name] = (sub, name, p)
        try:
            yield
        finally:
            for sub, name, p in swapped.values():
                value = sub._parameters[name].detach()
                sub._parameters[name] = p
                local = distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().copy_(local)


def _weights_dir(source: str) -> Path:
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    from huggingface_hub import snapshot_download  # a hub id: the cached snapshot's safetensors

    return Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))


def load_safetensors(model: Any, directory: Path, key: Callable[[str], str | None] = lambda name: name) -> None:
    """Load ``directory/*.safetensors`` into ``model`` in place, each rank reading only its shards.
    ``key(name)`` is the name of the model's weight ``name`` in the files (``None``: not in the files,
    left alone); weights that name the same file entry all get its value."""
    import torch.distributed.checkpoint as dcp
    from safetensors import safe_open
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise AutomodelError(
            f"model: no *.safetensors weights in {directory}; meta-device init reads safetensors only",
            )
    in_files: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            in_files.update(h.keys())
    state = get_model_state_dict(model)
    owner = {name: id(t) for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    names = {k: key(k) for k in state}
    loaded = {owner.get(k) for k, f in names.items() if f in in_files}
    missing = [k for k, f in names.items() if f is not None and f not in in_files and (owner.get(k) is None or owner[k] not in loaded)]
    if missing:
        raise AutomodelError(
            f"model: {len(missing)} weights of the model are not in {directory} (e.g. {', '.join(missing[:3])}); "
            "set meta_init: false on the parallelizer to load the model unsharded first"
        )
    read: dict[str, Any] = {}  # file name -> the first model tensor it fills
    for k, f in names.items():
        if f in in_files:
            read.setdefault(f, state[k])
    dcp.load(read, storage_reader=dcp.HuggingFaceStorageReader(str(directory)))
    state = {k: read[f] for k, f in names.items() if f in read}
    set_model_state_dict(model, state, options=StateDictOptions(strict=False))


def init_weights(base: Any, seed: int, key: Callable[[str], str | None] = lambda name: name) -> None:
    """``base._init_weights`` on every module (children first, like ``Module.apply``), seeded: each
    module's parameters are initialized at full size and sharded ones keep only their local shard, so
    the values do not depend on how the model is sharded.

    ``key`` names each parameter as in pretrained files (see :func:`checkpoint_key`): modules whose
    parameters are all in no file (``None``) or copies of an earlier parameter's entry are not
    initialized here, so the random stream, hence the weights, are those of the untransformed model;
    the copies then get the value of the first parameter of their entry."""
    import torch

    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # pragma: no cover
        DTensor = ()  # type: ignore[assignment,misc]

    first: dict[str, Any] = {}  # file name -> first parameter
    copies: list[tuple[Any, Any]] = []
    skip: set[str] = set()
    for name, p in base.named_parameters(remove_duplicate=False):
        f = key(name)
        if f is not None and f not in first:
            first[f] = p
        elif p is not first.get(f):
            skip.add(name)
            if f is not None:
                copies.append((p, first[f]))

    def visit(module: Any, prefix: str, owner: Any) -> None:
        # each module is initialized by the innermost (sub)model holding it: a composite model (a VLM's
        # vision tower, its language model) leaves its parts' own modules to their _init_weights
        if module is not base and hasattr(module, "config") and callable(getattr(module, "_init_weights", None)):
            owner = module
        for child_name, child in module.named_children():
            visit(child, prefix + child_name + ".", owner)
        own = [(name, p) for name, p in module._parameters.items() if p is not None]
        if own and all(prefix + name in skip for name, _ in own):
            return
        originals = {}
        for name, p in own:
            local = p.to_local() if isinstance(p, DTensor) else p
            module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=local.device), p.requires_grad)
            originals[name] = p
        owner._init_weights(module)
        for name, p in originals.items():
            full = module._parameters[name].data
            module._parameters[name] = p
            if isinstance(p, DTensor):
                full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p = p.to_local()
            p.data.copy_(full)

    torch.manual_seed(seed)
    with torch.no_grad():
        visit(base, "", base)
        for p, src in copies:
            p.copy_(src)


def unwrap(model: Any) -> Any:
    """The Hugging Face model inside wrappers such as DistributedDataParallel."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model
