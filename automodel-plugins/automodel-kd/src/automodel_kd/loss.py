"""The ``kd`` loss: distil a frozen teacher into the student being trained.

The teacher is any model a registered loader builds (``teacher: {name: hf, pretrained: ...}``). The
loop calls :meth:`KnowledgeDistillation.setup` once the student is built and parallelized: the
teacher is built there through the core's own :func:`automodel.model.build_model` with the run's
parallelizers (fsdp2, tp; not DDP, which has nothing to replicate for a frozen model), frozen and put
in eval mode. It is an attribute of the loss, never of the model, so checkpoints and exports never
contain it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from automodel_kd.vocab import vocabulary_problems

Kind = Literal["forward_kl", "reverse_kl", "jsd"]


class _LastHidden:
    """Captures the output of a model's decoder body (its final hidden states)."""

    def __init__(self, model: Any):
        self.value: Any = None
        model.get_decoder().register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.value = output[0] if isinstance(output, tuple) else output.last_hidden_state


class KnowledgeDistillation:
    """``(1 - kd_weight) * CE(student) + kd_weight * T^2 * KD(teacher, student)`` over label tokens.

    Args:
        teacher: the teacher's model section, exactly like ``model:`` (``name:`` a registered loader, or
            ``_target_``, and its arguments; e.g. ``{name: hf, pretrained: runs/big/hf, dtype: bfloat16}``).
            It must use the student's tokenizer vocabulary (checked before launch).
        kind: ``forward_kl`` (KL(teacher || student), the classic choice), ``reverse_kl``
            (KL(student || teacher), mode-seeking) or ``jsd`` (generalized Jensen-Shannon, ``beta``).
        temperature: softens both distributions; the KD term is multiplied by ``temperature ** 2``.
        kd_weight: weight of the KD term; the student's cross-entropy on the labels gets ``1 - kd_weight``.
        beta: JSD mixture weight, ``m = beta * teacher + (1 - beta) * student``; only for ``kind: jsd``.
        chunk_size: label tokens per chunk (default: as many as keep one ``[tokens, vocab]`` fp32 chunk
            within 32 MiB).
        ignore_index: label value that takes no loss.
        teacher_transforms: apply the run's ``transforms`` (e.g. fp8) to the teacher too (default: no;
            LoRA-style transforms make no sense on a frozen teacher).
    """

    uses_hidden_states = True

    def __init__(self, teacher: dict, kind: Kind = "forward_kl", temperature: float = 1.0, kd_weight: float = 0.5,
                 beta: float = 0.5, chunk_size: int | None = None, ignore_index: int = -100,
                 teacher_transforms: bool = False):
        problems = self.validate_args(dict(teacher=teacher, kind=kind, temperature=temperature, kd_weight=kd_weight,
                                           beta=beta, chunk_size=chunk_size), None)
        if problems:
            from automodel.errors import ConfigError, as_problems

            raise ConfigError(as_problems(problems))  # keys relative to the section: built outside a config too
        from automodel_kd.fused import KDOptions

        self.teacher_spec = dict(teacher)
        self.options = KDOptions(kind=kind, temperature=float(temperature), kd_weight=float(kd_weight), beta=float(beta),
                                 ignore_index=int(ignore_index), chunk_size=chunk_size)
        self.teacher_transforms = teacher_transforms
        self.teacher: Any = None
        self.teacher_hf: Any = None
        self._hidden: _LastHidden | None = None
        self._inputs: frozenset[str] | None = None
        self.last: dict[str, Any] = {}  # the last call's unscaled ce_sum / kd_sum (tensors)

    # -- validation (before launch) ----------------------------------------------------------------

    @staticmethod
    def validate_args(args: dict[str, Any], config: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
        """Option ranges, the teacher section (its loader's own checks), and the teacher's vocabulary
        against the student's, read from their config.json / tokenizer files (nothing is loaded)."""
        out: list[tuple[str, str, str]] = []
        t = args.get("temperature", 1.0)
        if t is not None and float(t) <= 0:
            out.append(("temperature", f"must be > 0, got {t}", "1.0 keeps the distributions; 2.0 is a common softening"))
        w = args.get("kd_weight", 0.5)
        if w is not None and not 0.0 <= float(w) <= 1.0:
            out.append(("kd_weight", f"must be in [0, 1], got {w}", "0.5 mixes CE and KD equally; 1.0 is pure distillation"))
        b = args.get("beta", 0.5)
        if b is not None and not 0.0 < float(b) < 1.0:
            out.append(("beta", f"must be in (0, 1), got {b}",
                        "0.5 is the symmetric JSD; for beta 0 or 1 use kind: forward_kl or reverse_kl"))
        chunk = args.get("chunk_size")
        if chunk is not None and int(chunk) < 1:
            out.append(("chunk_size", f"must be a positive number of tokens or null, got {chunk}", "leave it null to size chunks automatically"))
        teacher = args.get("teacher")
        if not isinstance(teacher, dict) or not ("name" in teacher or "_target_" in teacher):
            out.append(("teacher", f"expected the teacher's model section with 'name:' (a model loader), got {teacher!r}",
                        "e.g. teacher: {name: hf, pretrained: runs/quickstart/hf}"))
            return out
        if config is None:
            return out
        out += _teacher_section_problems(teacher, config)
        return out

    # -- setup (after the student is built and parallelized, before the optimizer) -----------------

    def setup(self, model: Any, ctx: Any) -> None:
        """Build the teacher through the run's model loader and parallel layout; freeze it."""
        from automodel.model import bind_model, build_model
        from automodel.weights import unwrap

        t0 = time.perf_counter()
        spec = _absolute(self.teacher_spec)
        cfg = {"model": spec, "transforms": (ctx.config.get("transforms") or []) if self.teacher_transforms else []}
        plugins = ctx.plugins
        if plugins is None:  # a Context made by hand (tests, notebooks): the installed plugins
            from automodel.plugins import load_plugins

            plugins = load_plugins([m for m in ctx.config.get("plugins") or [] if isinstance(m, str)])
        layout = _teacher_layout(ctx, plugins)
        built = build_model(*bind_model(cfg, plugins), ctx, layout)
        teacher = built.model
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        self.teacher, self.teacher_hf = teacher, unwrap(teacher)
        self._hidden = _LastHidden(self.teacher_hf)
        self._inputs = _forward_inputs(self.teacher_hf)
        student_hf = unwrap(model)
        s_vocab = student_hf.get_output_embeddings().weight.shape[0]
        t_vocab = self.teacher_hf.get_output_embeddings().weight.shape[0]
        if s_vocab != t_vocab:
            from automodel.errors import AutomodelError

            raise AutomodelError(f"loss.teacher: the teacher's lm_head covers {t_vocab} tokens but the student's covers "
                                 f"{s_vocab}; distillation compares the two distributions token by token, so both models "
                                 "need the same vocabulary (tokenizer and vocab_size)")
        n = sum(p.numel() for p in teacher.parameters())
        dtype = next(teacher.parameters()).dtype
        sharded = ", ".join(type(p).__name__ for p in (layout.parallelizers if layout else [])) or "not sharded"
        ctx.print(f"kd: teacher {n / 1e6:.2f}M parameters ({str(dtype).removeprefix('torch.')}, {sharded}, frozen) "
                  f"loaded in {time.perf_counter() - t0:.1f}s; loss {self.options.kind}, T={self.options.temperature}, "
                  f"kd_weight={self.options.kd_weight}")

    # -- the loss ------------------------------------------------------------------------------------

    def teacher_hidden_states(self, batch: dict[str, Any]) -> Any:
        """The teacher's final hidden states for ``batch`` (no grad; its lm_head is never applied)."""
        import torch

        if self.teacher is None:
            raise RuntimeError("kd: the teacher is not loaded; the training loop calls loss.setup(model, ctx) first "
                               "(automodel-core with the loss setup member is required)")
        inputs = {k: v for k, v in batch.items() if k != "labels" and (self._inputs is None or k in self._inputs)}
        keep = torch.zeros(1, dtype=torch.long, device=inputs["input_ids"].device)
        with torch.no_grad():
            self.teacher(**inputs, use_cache=False, logits_to_keep=keep)
        hidden, self._hidden.value = self._hidden.value, None
        return hidden

    def __call__(self, *, labels: Any, num_label_tokens: Any = None, hidden_states: Any = None, lm_head_weight: Any = None,
                 batch: dict[str, Any] | None = None, logits: Any = None, **_: Any) -> Any:
        from automodel_kd.fused import fused_linear_kd

        if hidden_states is None or lm_head_weight is None:
            raise TypeError("kd needs hidden_states and lm_head_weight (uses_hidden_states = True)")
        if batch is None:
            raise TypeError("kd needs the micro-batch (keyword 'batch') to run the teacher; automodel-core passes it to "
                            "losses whose __call__ accepts it")
        teacher_hidden = self.teacher_hidden_states(batch)
        teacher_weight = self.teacher_hf.get_output_embeddings().weight
        parts: dict[str, Any] = {}
        loss = fused_linear_kd(hidden_states, lm_head_weight, teacher_hidden, teacher_weight, labels, num_label_tokens,
                               self.options, parts)
        self.last = parts
        reshard = getattr(self.teacher, "reshard", None)  # FSDP2: free the teacher's gathered root parameters
        if callable(reshard):
            reshard()
        return loss

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options}, teacher={self.teacher_spec})"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _forward_inputs(model: Any) -> frozenset[str] | None:
    """The batch columns the teacher's forward names (extra columns meant for the loss never reach it)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    named = frozenset(n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return named or None


def _absolute(spec: dict[str, Any]) -> dict[str, Any]:
    """Local paths of the teacher section made absolute (every rank resolves them the same way)."""
    out = dict(spec)
    for key in ("pretrained", "tokenizer"):
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(os.path.expanduser(value)):
            out[key] = str(Path(value).expanduser().resolve())
    return out


def _teacher_layout(ctx: Any, plugins: Any) -> Any:
    """The run's parallelizers, built afresh from ``parallel:`` (same sizes, same mesh), without those
    on ``dp_replicate`` (DDP / the HSDP replica marker): a frozen model has no gradient to all-reduce."""
    from automodel.config import build_component
    from automodel.mesh import Layout

    if ctx.mesh is None:
        return None
    parallelizers = [build_component(plugins, "parallelizers", spec) for spec in ctx.config.get("parallel") or []]
    names = tuple(ctx.mesh.mesh_dim_names or ())
    keep = []
    for p in parallelizers:
        if p.dim == "dp_replicate" or p.dim not in names:
            continue
        if getattr(p, "size", None) is None:
            p.size = ctx.mesh[p.dim].size()
        keep.append(p)
    return Layout(keep) if keep else None


def _teacher_section_problems(teacher: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The teacher section checked like ``model:`` is: its loader exists, its keys and types, its own
    ``validate_args``; and every parallelizer's ``validate_model`` (e.g. TP head counts)."""
    from automodel.architecture import call_validate_model
    from automodel.bound import bind, build_component
    from automodel.contracts import Parallelizer, member
    from automodel.plugins import load_plugins

    try:
        plugins = load_plugins([m for m in config.get("plugins") or [] if isinstance(m, str)])
    except Exception as e:  # noqa: BLE001 - reported as a config problem
        return [("teacher", f"could not load plugins to check the teacher's loader: {e}", "")]
    found: list[Any] = []
    bind(plugins, "model_loaders", teacher, "loss.teacher", found, config, custom=True)  # loader, keys, types, validate_args
    out = [(_strip(p.key), p.message, p.hint or "") for p in found]
    if out:
        return out
    for i, spec in enumerate(config.get("parallel") or []):
        try:
            p = build_component(plugins, "parallelizers", spec)
        except Exception:  # noqa: BLE001 - the parallel section reports its own problems
            continue
        check = member(p, Parallelizer, "validate_model")
        if check is not None:
            out += [("teacher", f"parallel.{i}: {message}", hint or "") for message, hint in call_validate_model(check, teacher, plugins) or []]
    student = config.get("model")
    if not out and isinstance(student, dict):  # the vocabularies, from what the two loaders declare and the tokenizer files
        out += [("teacher", message, hint) for message, hint in vocabulary_problems(student, teacher, plugins)]
    return out


def _strip(key: str) -> str:
    """``loss.teacher.x`` -> ``teacher.x`` (the core prefixes ``loss.`` itself)."""
    if not key:
        return "teacher.name"
    return key[len("loss."):] if key.startswith("loss.") else key
