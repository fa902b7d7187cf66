"""Reference losses written with plain torch ops on the full logits (what the fused loss must match)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_loss(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, num_label_tokens: float | torch.Tensor,
                   label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None) -> torch.Tensor:
    z = (h.reshape(-1, h.shape[-1]) @ w.t()).float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    y = labels.reshape(-1)
    keep = y != -100
    lse = torch.logsumexp(z, dim=-1)
    logp = z - lse[:, None]
    nll = -logp.gather(1, y.clamp(min=0)[:, None])[:, 0]
    smooth = -logp.mean(dim=-1)
    token = (1 - label_smoothing) * nll + label_smoothing * smooth + z_loss * lse**2
    return torch.where(keep, token, 0.0).sum() / num_label_tokens


def torch_ce(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, num_label_tokens: float | torch.Tensor,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """What the builtin masked_ce computes: full logits, fp32 upcast, F.cross_entropy(sum) / count."""
    z = (h.reshape(-1, h.shape[-1]) @ w.t()).float()
    return F.cross_entropy(z, labels.reshape(-1), ignore_index=-100, reduction="sum", label_smoothing=label_smoothing) / num_label_tokens
