"""The ``lora`` transform: wrap the model's linear layers with LoRA / DoRA adapters through ``peft``.

``apply`` runs before the parallelizers (DDP, FSDP2, TP) and returns the Hugging Face model itself with
``peft`` layers injected (``q_proj`` becomes a ``peft`` ``lora.Linear`` around the original layer), so
every parallelizer and the loop see the usual module tree. Only adapter parameters (and
``modules_to_save`` copies) keep ``requires_grad``, so the optimizer only sees them. ``export`` replaces
the full-weights export: a PEFT adapter directory, and optionally the merged model.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from automodel.contracts import ExportOption
from automodel.errors import AutomodelError

ALL_LINEAR = "all-linear"
ADAPTER = "default"


class LoRA:
    """LoRA / DoRA adapters (``peft.LoraConfig`` + ``peft.get_peft_model``).

    Config keys:

    * ``r``: adapter rank; ``alpha``: scaling numerator (scale = alpha / r, or alpha / sqrt(r) with
      ``use_rslora``); ``dropout``: dropout on the adapter input.
    * ``target_modules``: which linear layers get adapters: a list of names (a module matches when its
      full name equals or ends with ``.<name>``, e.g. ``q_proj``), a regular expression string matched
      against full module names, or ``all-linear`` (every linear layer except the output head). A bare
      name as a string (``q_proj``) is the list ``[q_proj]``.
    * ``exclude_modules``: names (list) or a regex of modules to leave alone.
    * ``use_dora``: weight-decomposed LoRA (DoRA); ``use_rslora``: rank-stabilized scaling.
    * ``modules_to_save``: modules trained fully and saved with the adapter (e.g. ``[lm_head]``).
    * ``init_lora_weights``: ``true`` (A Kaiming-uniform, B zero: the model starts unchanged),
      ``gaussian`` (A normal(0, 1/r), B zero) or ``false`` (both random; for tests).
    * ``export_merged``: at export also write the merged model (adapters folded into the base weights)
      as consolidated safetensors to ``<output_dir>/hf/merged``.
    * ``seed``: seed of the adapter initialization (default: the run's ``seed``). Adapters are
      initialized from this seed alone, so every process layout starts from the same adapters.
    * ``allow_random_base``: LoRA freezes the base model, so a base built from ``model.config`` (random
      weights) is refused before launch unless this is ``true`` (tests, benchmarks). Such a base is
      exported next to the adapter (``<out>/base``) so the adapter stays loadable.

    The adapter's ``adapter_config.json`` always names a loadable base (``base_model_name_or_path``): the
    absolute path of a local ``model.pretrained``, its hub id, or the exported ``<out>/base``.

    ``automodel export`` option (declared in ``export_options``): ``--merged/--adapter-only`` overrides
    ``export_merged`` for that export.
    """

    export_options = (ExportOption("merged", off="adapter-only",
                                   help="also write the merged model to OUT/merged, or only the adapter "
                                   "(default: the transform's export_merged)"),)

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        target_modules: list[str] | str = ALL_LINEAR,
        exclude_modules: list[str] | str | None = None,
        use_dora: bool = False,
        use_rslora: bool = False,
        modules_to_save: list[str] | None = None,
        init_lora_weights: bool | Literal["gaussian"] = True,
        export_merged: bool = False,
        seed: int | None = None,
        allow_random_base: bool = False,
    ):
        problems = validate_args(dict(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                                      exclude_modules=exclude_modules, init_lora_weights=init_lora_weights))
        if problems:
            key, message, hint = problems[0]
            raise AutomodelError(f"transforms.lora.{key}: {message}" + (f" ({hint})" if hint else ""))
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = _names(target_modules)
        self.exclude_modules = _names(exclude_modules)
        self.use_dora = use_dora
        self.use_rslora = use_rslora
        self.modules_to_save = list(modules_to_save) if modules_to_save else None
        self.init_lora_weights = init_lora_weights
        self.export_merged = export_merged
        self.seed = seed
        self.allow_random_base = allow_random_base
        self.base: str = ""  # where the base model came from (model.config.name_or_path), set by apply()
        self.peft_model: Any = None  # the PeftModel around the returned model, set by apply()
        self._seed = 0  # of the adapter init, set by apply()
        self._wrappers: list[tuple[str, str]] = []  # peft layers of the returned model, set by apply()

    # -- configuration ----------------------------------------------------------------------------

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig`` these keys describe."""
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            exclude_modules=self.exclude_modules,
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            modules_to_save=self.modules_to_save,
            init_lora_weights=self.init_lora_weights,
        )

    # -- the transform contract -------------------------------------------------------------------

    def apply(self, model: Any, ctx: Any) -> Any:
        from peft import get_peft_model

        meta = any(p.is_meta for p in model.parameters())
        self.base = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
        if not self.base and not self.allow_random_base:
            ctx.print("warning: lora: the base model was not loaded from a path or hub id (built from a config: "
                      "random weights?) and LoRA freezes it; the adapter will be exported with the base "
                      "(<output_dir>/hf/base). Start from a trained model (model.pretrained), or set "
                      "allow_random_base: true to silence this")
        config = self.lora_config()
        if self.exclude_modules is None and getattr(model, "automodel_lora_exclude", None):
            # the loader's default scope (automodel-vlm: the language model only, not the vision tower)
            config.exclude_modules = model.automodel_lora_exclude
        targets = check_targets(model, config)
        with warnings.catch_warnings():  # peft calls an attribute transformers 5 deprecated; not the user's to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
        self.peft_model = peft_model
        self._seed = self.seed if self.seed is not None else int((ctx.config or {}).get("seed", 0))
        self._wrappers = _wrappers(peft_model.base_model.model)
        if not meta:
            self.init_weights(peft_model.base_model.model, _in_place)
        # else: still on the meta device (meta_init parallelizers); the core loads this rank's shards
        # of the base weights through checkpoint_key(), then calls init_weights()

        total = sum(p.numel() for p in peft_model.parameters())
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        kinds = Counter(name.rsplit(".", 1)[-1] for name in targets)
        scale = f"alpha/{'sqrt(r)' if self.use_rslora else 'r'}"
        ctx.print(
            f"lora: {'DoRA' if self.use_dora else 'LoRA'} r={self.r} alpha={self.alpha} ({scale}) on {len(targets)} "
            f"linear layers ({', '.join(f'{k} x{n}' for k, n in kinds.items())})"
            f"{', full: ' + ', '.join(self.modules_to_save) if self.modules_to_save else ''}; "
            f"trainable {trainable / 1e6:.3f}M of {total / 1e6:.3f}M parameters ({100 * trainable / total:.2f}%)"
            + ("; on the meta device: base weights load sharded, adapters initialized after" if meta else "")
        )
        return peft_model.base_model.model

    def checkpoint_key(self, name: str) -> str | None:
        """The name of the model's weight ``name`` in the base model's files: ``<layer>.base_layer.<w>``
        and a ``modules_to_save`` copy or original (``<m>.modules_to_save.default.<w>``,
        ``<m>.original_module.<w>``) are the base model's ``<layer>.<w>`` / ``<m>.<w>``; adapter
        weights (``lora_A``, ``lora_B``, DoRA's ``lora_magnitude_vector``) are in no file (``None``)."""
        for prefix, kind in self._wrappers:  # innermost first
            if not name.startswith(prefix + "."):
                continue
            head, _, tail = name[len(prefix) + 1:].partition(".")
            if kind == "lora":
                if head != "base_layer":
                    return None
                name = f"{prefix}.{tail}"
            elif head == "original_module":
                name = f"{prefix}.{tail}"
            elif head == "modules_to_save":
                name = f"{prefix}.{tail.partition('.')[2]}"
        return name

    def init_weights(self, model: Any, full_size: Any) -> None:
        """(Re)initialize every adapter as ``peft`` does (``init_lora_weights``), from ``seed`` alone, in
        module order, so that a run starts from the same adapters whatever the number of processes or
        the parallelizers. ``full_size(*modules)`` makes sharded parameters whole for the block (the
        core's, after a meta-device load); DoRA's magnitude is computed from the (loaded) base weight."""
        import torch
        from peft.tuners.lora import LoraLayer

        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(self._seed)
            for module in model.modules():
                if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
                    continue
                dora = ADAPTER in module.lora_magnitude_vector
                parts = [module.lora_A[ADAPTER], module.lora_B[ADAPTER]]
                if dora:
                    parts += [module.lora_magnitude_vector[ADAPTER], module.get_base_layer()]
                with full_size(*parts):
                    if self.init_lora_weights is False:
                        module.lora_A[ADAPTER].reset_parameters()
                        module.lora_B[ADAPTER].reset_parameters()
                    else:
                        module.reset_lora_parameters(ADAPTER, self.init_lora_weights)
                    if dora:  # magnitude = row norms of W + scale * B A
                        module.lora_magnitude_vector[ADAPTER].update_layer(
                            base_layer=module.get_base_layer(), lora_A=module.lora_A[ADAPTER].weight,
                            lora_B=module.lora_B[ADAPTER].weight, scaling=module.scaling[ADAPTER],
                        )

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path, ctx: Any) -> Path:
        """Write a PEFT adapter directory (``PeftModel.from_pretrained(base, out_dir)`` loads it) plus the
        tokenizer to ``out_dir``; with ``export_merged`` also the merged model to ``out_dir/merged``.
        ``ctx.export_options["merged"]`` (``automodel export --merged/--adapter-only``) overrides the key."""
        from automodel_lora.export import loadable_base, save_adapter, save_base, save_merged

        if self.peft_model is None:
            raise AutomodelError("transforms.lora: export() called before apply()")
        out = Path(out_dir)
        base = loadable_base(self.base)
        if base is None:  # built from a config: export it, so that the adapter names a base that exists
            base = str(save_base(self.peft_model, model, tokenizer, out / "base", ctx).resolve())
            ctx.print(f"lora: the base model was built from a config, not loaded: exported it to {out / 'base'} "
                      "(the adapter's base_model_name_or_path)")
        self.peft_model.peft_config[ADAPTER].base_model_name_or_path = base
        save_adapter(self.peft_model, model, tokenizer, out, ctx)
        if ctx.export_options.get("merged", self.export_merged):
            save_merged(self.peft_model, model, tokenizer, out / "merged", ctx)
        return out


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def validate_args(args: dict[str, Any], config: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """Checks of the YAML values run before launch (the model is not built yet); with the whole
    ``config``, also that the base model LoRA freezes is loaded, not built from ``model.config``."""
    out: list[tuple[str, str, str]] = []
    model = (config or {}).get("model") or {}
    if isinstance(model, dict) and model.get("config") and not model.get("pretrained") and not args.get("allow_random_base"):
        out.append(("", "the base model is built from model.config (random weights) and LoRA freezes it: the adapter "
                    "would learn on top of noise",
                    "start from a trained model: model.pretrained=<dir or hub id> '~model.config' '~model.tokenizer' "
                    "(after the quickstart: examples/lora/config.yaml), or set allow_random_base: true in this "
                    "transform (tests, benchmarks)"))
    r = args.get("r", 8)
    if isinstance(r, int) and r < 1:
        out.append(("r", f"must be a positive integer, got {r}", "typical values: 8, 16, 64"))
    alpha = args.get("alpha", 16)
    if isinstance(alpha, (int, float)) and alpha <= 0:
        out.append(("alpha", f"must be positive, got {alpha}", "a common choice is alpha = 2 * r"))
    dropout = args.get("dropout", 0.0)
    if isinstance(dropout, (int, float)) and not 0 <= dropout < 1:
        out.append(("dropout", f"must be in [0, 1), got {dropout}", "e.g. dropout: 0.05"))
    for key in ("target_modules", "exclude_modules"):
        value = args.get(key)
        if isinstance(value, list) and not value and key == "target_modules":
            out.append((key, "is empty", "name the layers to adapt, e.g. [q_proj, v_proj], or write all-linear"))
        if isinstance(value, str) and value != ALL_LINEAR:
            try:
                re.compile(value)
            except re.error as e:
                out.append((key, f"is not a valid regular expression: {e}", "give a list of names, a regex, or all-linear"))
    init = args.get("init_lora_weights", True)
    if isinstance(init, str) and init != "gaussian":
        out.append(("init_lora_weights", f"unknown initialization {init!r}", "use true, false or gaussian"))
    return out


LoRA.validate_args = staticmethod(validate_args)  # type: ignore[attr-defined]


def _is_excluded(config: Any, name: str) -> bool:
    """``name`` is left alone by ``exclude_modules`` (a regex over full names, or names), as peft decides."""
    exclude = config.exclude_modules
    if not exclude:
        return False
    if isinstance(exclude, str):
        return re.fullmatch(exclude, name) is not None
    return any(name == e or name.endswith("." + e) for e in exclude)


def _names(value: Any) -> Any:
    """A bare module name given as a string (``target_modules: q_proj``) means that name, not a regex
    that would have to match the full module path."""
    if isinstance(value, str) and value != ALL_LINEAR and re.fullmatch(r"\w+", value):
        return [value]
    return value


def linear_layer_names(model: Any) -> list[str]:
    """Full names of the model's ``nn.Linear`` layers."""
    import torch

    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _describe_linears(model: Any) -> str:
    names = linear_layer_names(model)
    kinds = Counter(n.rsplit(".", 1)[-1] for n in names)
    example = {k: next(n for n in names if n.rsplit(".", 1)[-1] == k) for k in kinds}
    return "\n".join(f"    {k} (x{n}, e.g. {example[k]})" for k, n in kinds.items())


def check_targets(model: Any, config: Any) -> list[str]:
    """The full names of the modules ``config`` adapts; an :class:`AutomodelError` that lists the model's
    linear layers when a target matches nothing or matches a layer that is not linear."""
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists

    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    problems: list[str] = []
    target = config.target_modules
    if isinstance(target, str) and target == ALL_LINEAR:
        matched = [n for n in linear_layer_names(model) if modules[n] is not head and not _is_excluded(config, n)]
    else:
        matched = [n for n in names if check_target_module_exists(config, n)]
        if isinstance(target, str):
            if not any(re.fullmatch(target, n) for n in names):
                problems.append(f"target_modules regex {target!r} matches no module")
        else:
            for t in sorted(target):
                if not any(n == t or n.endswith("." + t) for n in names):
                    problems.append(f"target_modules entry {t!r} matches no module")
        bad = [n for n in matched if not isinstance(modules[n], torch.nn.Linear)]
        if bad:
            problems.append(
                f"target_modules matches {len(bad)} module(s) that are not linear layers "
                f"(e.g. {bad[0]}: {type(modules[bad[0]]).__name__}); LoRA here adapts nn.Linear layers "
                "(train other modules fully with modules_to_save)"
            )
    if config.exclude_modules and not isinstance(config.exclude_modules, str):
        for t in sorted(config.exclude_modules):
            if not any(n == t or n.endswith("." + t) for n in names):
                problems.append(f"exclude_modules entry {t!r} matches no module")
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", None)
    for t in config.modules_to_save or []:
        hits = [n for n in names if n == t or n.endswith("." + t)]
        if not hits:
            problems.append(f"modules_to_save entry {t!r} matches no module")
        elif tied and any(modules[n] is head or modules[n] is embed for n in hits):
            problems.append(
                f"modules_to_save entry {t!r} is one half of the model's tied embeddings (lm_head and the input "
                "embedding share one weight), which a separate trainable copy would untie; train it through "
                "target_modules, or use a model with tie_word_embeddings: false"
            )
    if not matched and not problems:
        problems.append("target_modules (after exclude_modules) leaves no layer to adapt")
    if problems:
        raise AutomodelError(
            "transforms.lora: " + "; ".join(problems) + f"\n  the model ({type(model).__name__}) has these linear layers:\n"
            + _describe_linears(model)
            + "\n  -> use these names in target_modules (a list of names, a regex over full names, or all-linear)"
        )
    return matched


# --------------------------------------------------------------------------------------------------
# Meta-device models
# --------------------------------------------------------------------------------------------------


def _wrappers(model: Any) -> list[tuple[str, str]]:
    """``(name, kind)`` of the ``peft`` layers in ``model``: ``lora`` (``base_layer`` + adapters) or
    ``saved`` (``modules_to_save``: ``original_module`` + copies), innermost (longest name) first."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    out = [(name, "lora") for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    out += [(name, "saved") for name, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    return sorted(out, key=lambda item: -len(item[0]))


@contextmanager
def _in_place(*modules: Any) -> Iterator[None]:
    """``full_size`` for a model that is not sharded: the parameters are already whole."""
    yield
