"""The registered losses: ``triton_ce`` (Triton kernels) and ``chunked_ce`` (pure PyTorch).

Both follow the automodel loss contract with ``uses_hidden_states = True``: the loop never computes
logits and passes the final hidden states and the lm_head weight instead.
"""

from __future__ import annotations

from typing import Any


class FusedLinearCrossEntropy:
    """Fused linear cross-entropy computed chunk by chunk with Triton kernels.

    Args:
        ignore_index: label value that takes no loss.
        label_smoothing: ``eps`` in ``(1 - eps) * CE + eps * mean_j(-log p_j)`` (as ``F.cross_entropy``).
        z_loss: coefficient of the ``logsumexp(logits)^2`` auxiliary loss (PaLM); 0 disables it.
        softcap: Gemma-style logit soft-capping ``softcap * tanh(logits / softcap)``; ``None`` disables it.
        chunk_size: vocabulary entries per chunk (default: the most that keep one ``[tokens, chunk]``
            logits block within 32 MiB, a multiple of 128).
    """

    uses_hidden_states = True
    backend = "triton"

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: float | None = None, chunk_size: int | None = None):
        problems = self.validate_args(dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, chunk_size=chunk_size))
        if problems:
            from automodel.errors import ConfigError, as_problems

            raise ConfigError(as_problems(problems))  # keys relative to the section: built outside a config too
        from automodel_triton_ce.fused import Options

        self.options = Options(ignore_index=int(ignore_index), label_smoothing=float(label_smoothing), z_loss=float(z_loss),
                               softcap=None if softcap is None else float(softcap), chunk_size=chunk_size, backend=self.backend)

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        problems = []
        eps = args.get("label_smoothing", 0.0)
        if eps is not None and not 0.0 <= float(eps) < 1.0:
            problems.append(("label_smoothing", f"must be in [0, 1), got {eps}", "0.1 is a common value; 0 disables smoothing"))
        z = args.get("z_loss", 0.0)
        if z is not None and float(z) < 0:
            problems.append(("z_loss", f"must be >= 0, got {z}", "1e-4 is a common value; 0 disables it"))
        cap = args.get("softcap")
        if cap is not None and float(cap) <= 0:
            problems.append(("softcap", f"must be > 0 or null, got {cap}", "Gemma-2 uses 30.0; null disables capping"))
        chunk = args.get("chunk_size")
        if chunk is not None and int(chunk) < 1:
            problems.append(("chunk_size", f"must be a positive number of vocabulary entries or null, got {chunk}", "leave it null to size chunks automatically"))
        return problems

    def plan_stand_in(self) -> Any:
        """``automodel plan`` runs on fake tensors, which Triton kernels cannot read: the pure-PyTorch twin
        (same options, same chunks) stands in for the estimate."""
        from dataclasses import replace

        twin = ChunkedCrossEntropy.__new__(ChunkedCrossEntropy)
        twin.options = replace(self.options, backend="torch")
        return twin

    def __call__(self, *, labels: Any, num_label_tokens: Any = None, logits: Any = None, hidden_states: Any = None,
                 lm_head_weight: Any = None, **_: Any) -> Any:
        from automodel_triton_ce.fused import fused_linear_cross_entropy

        if hidden_states is None or lm_head_weight is None:
            raise TypeError(f"{type(self).__name__} needs hidden_states and lm_head_weight (uses_hidden_states = True)")
        return fused_linear_cross_entropy(hidden_states, lm_head_weight, labels, num_label_tokens, self.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


class ChunkedCrossEntropy(FusedLinearCrossEntropy):
    """The same fused linear cross-entropy in plain PyTorch ops (no Triton): same options, same results."""

    backend = "torch"
    plan_stand_in = None  # runs on fake tensors itself
