"""The builtin loss: cross-entropy over label tokens, normalized by the global label-token count."""

from __future__ import annotations

from typing import Any


class MaskedCrossEntropy:
    """Sum of token cross-entropies (``-100`` ignored) divided by ``num_label_tokens``.

    Logits are upcast to fp32 (``fp32_upcast``) so bf16 training gets an fp32 loss. It reads logits only
    at label tokens (``logits_at_labels``): where the model can, the loop projects only those positions
    through ``lm_head``, so prompt and padding tokens cost no vocabulary projection.
    """

    uses_hidden_states = False
    logits_at_labels = True

    def __init__(self, fp32_upcast: bool = True):
        self.fp32_upcast = fp32_upcast

    def __call__(self, *, labels: Any, num_label_tokens: Any, logits: Any = None, **_: Any) -> Any:
        import torch.nn.functional as F

        if self.fp32_upcast:
            logits = logits.float()
        if getattr(logits, "placements", None) is not None:  # a DTensor: vocabulary-sharded lm_head (tensor parallel)
            return _loss_parallel_ce(logits, labels) / num_label_tokens
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
        return loss / num_label_tokens


def _loss_parallel_ce(logits: Any, labels: Any) -> Any:
    """Summed cross-entropy of vocabulary-sharded DTensor logits without gathering the vocabulary
    (``torch.distributed.tensor.parallel.loss_parallel``). Its backward must run inside that context
    too, but the loop calls ``backward()`` later: the gradient is computed here and replayed."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor.parallel import loss_parallel

    class LossParallelCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, y: Any) -> Any:
            with torch.enable_grad(), loss_parallel():
                leaf = x.detach().requires_grad_()
                loss = F.cross_entropy(leaf.flatten(0, -2), y.flatten(), ignore_index=-100, reduction="sum")
                (ctx.grad,) = torch.autograd.grad(loss, leaf)
            return loss.detach().full_tensor()

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            mesh = ctx.grad.device_mesh
            return ctx.grad * DTensor.from_local(grad_out, mesh, [Replicate()] * mesh.ndim, run_check=False), None

    if not torch.is_grad_enabled():
        with loss_parallel():
            return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-100, reduction="sum").full_tensor()
    return LossParallelCE.apply(logits, labels)
