"""The ``hf`` model loader: any ``transformers`` causal LM, from a local path, a hub id or a config."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from automodel.errors import AutomodelError, did_you_mean

DTYPES = ("float32", "bfloat16", "float16")


def _looks_local(path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (./x, /x, a/b/c, ~) is a local path."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


def hf(
    ctx: Any,
    pretrained: str | None = None,
    config: dict | None = None,
    tokenizer: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``AutoModelForCausalLM`` and its tokenizer.

    Give either ``pretrained`` (a local directory or a hub id) or ``config`` (a dict with
    ``model_type`` and the architecture's fields, for a randomly initialized model, seeded by
    ``seed``: the same weights whether or not a parallelizer shards it) together with ``tokenizer``
    (path or hub id). ``dtype`` is the parameter dtype.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if pretrained:
        model_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        model_config.name_or_path = pretrained
    else:
        spec = dict(config or {})
        model_type = spec.pop("model_type")
        _check_model_config(model_type, spec)
        model_config = AutoConfig.for_model(model_type, **spec)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    tok = AutoTokenizer.from_pretrained(tokenizer or pretrained, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if len(tok) > model_config.vocab_size:
        raise AutomodelError(
            f"model: the tokenizer has {len(tok)} tokens but the model's vocab_size is {model_config.vocab_size}; "
            "use a matching tokenizer or raise model.config.vocab_size"
        )

    if ctx.meta_init:
        # Parameters on meta (sharded later, then materialized); buffers such as rotary frequencies
        # stay real because they are computed, not loaded.
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(model_config, dtype=torch_dtype, **kwargs)
        model.config.name_or_path = pretrained or ""
    elif pretrained:
        model = AutoModelForCausalLM.from_pretrained(pretrained, config=model_config, dtype=torch_dtype, **kwargs)
    else:
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch_dtype, **kwargs)
        # The initialization a model built on meta gets after sharding (materialize): a from-scratch
        # run starts from the same weights with any parallelizer and any number of processes.
        init_weights(model, ctx.config.get("seed", 0))
    if not ctx.meta_init:
        model.to(ctx.device)
    return model, tok


def _check_model_config(model_type: str, spec: dict[str, Any]) -> None:
    """``model.config``: a known ``model_type`` and only keys its config class has (transformers would
    keep a misspelled key as an unused attribute and build the model with the default instead)."""
    import inspect

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        close = did_you_mean(model_type, CONFIG_MAPPING.keys())
        raise AutomodelError(f"model.config.model_type: unknown model type {model_type!r}"
                             + (f"; did you mean {close!r}?" if close else " (see transformers' CONFIG_MAPPING)"))
    cls = CONFIG_MAPPING[model_type]
    known = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {})) | set(inspect.signature(cls.__init__).parameters)
    unknown = [k for k in spec if k not in known]
    if unknown:
        hints = [f"{k} (did you mean {c!r}?)" if (c := did_you_mean(k, known)) else k for k in unknown]
        raise AutomodelError(f"model.config: {cls.__name__} has no {', '.join(hints)}; "
                             "misspelled keys would be ignored and the default used")


def _hf_validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    if args.get("dtype") == "float16":
        out.append(("dtype", "float16 weights overflow in training without loss scaling, which automodel does not do",
                    "use bfloat16 (or float32)"))
    pretrained, config = args.get("pretrained"), args.get("config")
    if bool(pretrained) == bool(config):
        out.append(("", "give exactly one of 'pretrained' (path or hub id) or 'config' (a dict with model_type)", "e.g. pretrained: ./my-model"))
    if config and "model_type" not in config:
        out.append(("config.model_type", "missing", "e.g. model_type: llama"))
    if config and not args.get("tokenizer"):
        out.append(("tokenizer", "a model built from 'config' needs a tokenizer path or hub id", "e.g. tokenizer: ./tokenizer"))
    for key in ("pretrained", "tokenizer"):
        value = args.get(key)
        if isinstance(value, str) and _looks_local(value) and not Path(value).expanduser().exists():
            out.append((key, f"local path not found: {value} (resolved: {Path(value).expanduser().resolve()})",
                        "relative paths are relative to the current directory; write ${cfg_dir}/... for paths next to the config"))
    return out


hf.validate_args = _hf_validate  # type: ignore[attr-defined]
hf.path_args = ("pretrained", "tokenizer")  # type: ignore[attr-defined]


def materialize(model: Any, ctx: Any, transforms: Sequence[Any] = ()) -> None:
    """Give meta-device parameters real storage on ``ctx.device`` and load the weights named by
    ``model.config.name_or_path`` (or initialize them) — after the parallelizers have sharded them.

    Sharded (DTensor) parameters get storage for this rank's shard only. Pretrained weights are read
    with ``torch.distributed.checkpoint`` from the safetensors files: each rank reads only the slices
    it owns, so peak host memory per rank falls with the number of shards. Without pretrained weights,
    each module is initialized at full size in module order (the same random stream as an unsharded
    model) and only the local shard is kept.

    ``transforms`` (those applied to the model) may rename weights and add new ones: a transform's
    ``checkpoint_key(name)`` maps a weight's name to its name in the pretrained files (``None``: not in
    the files), and its ``init_weights(model, full_size)`` then initializes the weights the files do not
    hold (see ``register_model_transforms``).
    """
    if not any(p.is_meta for p in model.parameters()):
        return
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if not b.is_meta}
    # Parameters where the parallelizer wants them (host memory under CPU offload); buffers on the device.
    model.to_empty(device=ctx.extras.get("materialize_device", ctx.device))
    for name, value in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = value.to(ctx.device)
    base = unwrap(model)
    if hasattr(base, "tie_weights"):
        base.tie_weights()
    key = checkpoint_key(transforms)
    initializers = [t for t in transforms if hasattr(t, "init_weights")]
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
    mappers = [t.checkpoint_key for t in reversed(transforms) if hasattr(t, "checkpoint_key")]

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

    def visit(module: Any, prefix: str) -> None:
        for child_name, child in module.named_children():
            visit(child, prefix + child_name + ".")
        own = [(name, p) for name, p in module._parameters.items() if p is not None]
        if own and all(prefix + name in skip for name, _ in own):
            return
        originals = {}
        for name, p in own:
            local = p.to_local() if isinstance(p, DTensor) else p
            module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=local.device), p.requires_grad)
            originals[name] = p
        base._init_weights(module)
        for name, p in originals.items():
            full = module._parameters[name].data
            module._parameters[name] = p
            if isinstance(p, DTensor):
                full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p = p.to_local()
            p.data.copy_(full)

    torch.manual_seed(seed)
    with torch.no_grad():
        visit(base, "")
        for p, src in copies:
            p.copy_(src)


def unwrap(model: Any) -> Any:
    """The Hugging Face model inside wrappers such as DistributedDataParallel."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model
