"""Focal loss (Lin et al., 2017) over the label tokens."""

from __future__ import annotations

from typing import Any


class FocalLoss:
    """Cross-entropy weighted by ``(1 - p)^gamma``: confident tokens count less.

    Config: ``loss: {name: focal, gamma: 2.0}``; ``gamma: 0`` is plain cross-entropy.
    """

    uses_hidden_states = False

    def __init__(self, gamma: float = 2.0):  # the signature is the config schema
        self.gamma = gamma

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Value checks `automodel validate` runs before anything heavy."""
        gamma = args.get("gamma", 2.0)
        if isinstance(gamma, (int, float)) and gamma < 0:
            return [("gamma", f"must be >= 0, got {gamma}", "0 is plain cross-entropy; 2 is the usual value")]
        return []

    def __call__(self, *, labels: Any, num_label_tokens: Any, logits: Any = None, **_: Any) -> Any:
        import torch.nn.functional as F

        logp = F.log_softmax(logits.float(), -1).flatten(0, 1)
        mask = labels.flatten() != -100
        target = labels.flatten().clamp(min=0)
        lp = logp.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - lp.exp()) ** self.gamma) * lp
        # the SUM over label tokens divided by the global batch's label tokens: any split, same gradient
        return (loss * mask).sum() / num_label_tokens
