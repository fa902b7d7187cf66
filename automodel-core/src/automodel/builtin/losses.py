"""The builtin loss: cross-entropy over label tokens, normalized by the global label-token count."""

from __future__ import annotations

from typing import Any


class MaskedCrossEntropy:
    """Sum of token cross-entropies (``-100`` ignored) divided by ``num_label_tokens``.

    Logits are upcast to fp32 (``fp32_upcast``) so bf16 training gets an fp32 loss.
    """

    uses_hidden_states = False

    def __init__(self, fp32_upcast: bool = True):
        self.fp32_upcast = fp32_upcast

    def __call__(self, *, labels: Any, num_label_tokens: Any, logits: Any = None, **_: Any) -> Any:
        import torch.nn.functional as F

        if self.fp32_upcast:
            logits = logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
        return loss / num_label_tokens
