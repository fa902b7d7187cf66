"""The ``moe`` transform: router load-balancing loss, routing statistics, router freezing."""

from __future__ import annotations

from typing import Any

import torch
from automodel import runtime
from automodel.errors import AutomodelError


class MoE:
    """Router-side features of MoE fine-tuning (the experts' sharding is the ``ep`` parallelizer's).

    * ``aux_loss_weight``: weight of the Switch-Transformer load-balancing loss
      ``num_experts * sum_e f_e * P_e`` (``f_e``: share of the top-k assignments routed to expert
      ``e``, ``P_e``: mean router probability of ``e``; computed over the whole global micro-batch,
      all data-parallel ranks together, padding left out; summed over MoE layers, averaged over
      micro-batches). Its gradient is
      added in backward; the logged ``loss`` stays the language-model loss and the (unweighted)
      load-balancing loss is logged apart as ``moe_aux_loss``. ``None`` (default): the model config's
      ``router_aux_loss_coef`` (0.0 when it has none); ``0``: off (statistics still logged).
    * ``freeze_router``: router weights get no gradient (a fine-tune that keeps the pretrained routing).
    * ``stats``: log routing statistics (``moe_tokens_per_expert_min/max`` as a share of the balanced
      load, ``moe_dropped_tokens``) for every logged step.
    """

    def __init__(self, aux_loss_weight: float | None = None, freeze_router: bool = False, stats: bool = True):
        if aux_loss_weight is not None and aux_loss_weight < 0:
            raise AutomodelError(f"transforms.moe.aux_loss_weight: must be >= 0, got {aux_loss_weight}")
        self.aux_loss_weight = aux_loss_weight
        self.freeze_router = freeze_router
        self.stats = stats
        self.layers: list[Any] = []
        self._window: dict[str, Any] = {}
        self._accum: int | None = None
        self._ctx: Any = None

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        w = args.get("aux_loss_weight")
        if w is not None and w < 0:
            return [("aux_loss_weight", f"must be >= 0, got {w}", "0 turns the load-balancing loss off")]
        return []

    # -- apply ----------------------------------------------------------------------------------------

    def apply(self, model: Any, ctx: Any) -> Any:
        from automodel_moe.experts import find_moe_layers

        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.layers = find_moe_layers(hf)
        self._ctx = ctx
        if self.aux_loss_weight is None:
            self.aux_loss_weight = float(getattr(hf.config, "router_aux_loss_coef", 0.0) or 0.0)
        no_router = [layer.name for layer in self.layers if layer.router is None]
        if no_router:
            raise AutomodelError(f"transforms.moe: no router ('gate' module with a weight) next to the experts of {no_router[0]}")
        for layer in self.layers:
            if self.freeze_router:
                for p in layer.router.parameters():
                    p.requires_grad_(False)
            layer.router.register_forward_hook(self._router_hook)
        hf.register_forward_pre_hook(self._remember_mask, with_kwargs=True)
        self._reset()
        n = self.layers[0].num_experts
        ctx.print(f"moe: {len(self.layers)} MoE layers x {n} experts; load-balancing loss weight {self.aux_loss_weight:g}"
                  f"{', router frozen' if self.freeze_router else ''}")
        return model

    # -- the router hook -----------------------------------------------------------------------------

    def _reset(self) -> None:
        self._window = {"aux": 0.0, "aux_n": 0, "counts": None, "dropped": 0}

    def _accum_steps(self) -> int:
        if self._accum is None:
            from automodel.state import StepScheduler

            try:
                self._accum = StepScheduler(**self._ctx.config["step_scheduler"]).grad_accum_steps(self._ctx.dp_size)
            except Exception:  # no config (an API call): one micro-batch per step
                self._accum = 1
        return self._accum

    def _remember_mask(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        """The padding mask of this forward: padding tokens are routed too, but left out of the
        statistics and the load-balancing loss (so they do not depend on how a batch is split)."""
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _router_hook(self, module: Any, args: Any, output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled()) or not isinstance(output, tuple) or len(output) < 3:
            return None
        logits, weights, indices = output[0], output[1], output[2]
        ctx = self._ctx
        num_experts = logits.shape[-1]
        k = indices.shape[-1]
        probs = torch.softmax(logits.float(), dim=-1)
        mask = getattr(self, "_mask", None)
        if mask is not None and mask.numel() == probs.shape[0]:
            keep = mask.reshape(-1).bool()
            probs, routed = probs[keep], indices.reshape(-1, k)[keep]
        else:
            routed = indices
        flat = routed.reshape(-1)
        valid = (flat >= 0) & (flat < num_experts)
        counts = torch.bincount(flat[valid], minlength=num_experts).to(probs.dtype)
        tokens = torch.tensor([float(probs.shape[0]), float((~valid).sum())], device=probs.device)
        stats = torch.cat([counts, probs.sum(0).detach(), tokens])
        replicas = max(ctx.world_size // max(ctx.dp_size, 1), 1) if ctx is not None else 1
        stats = runtime.all_reduce(stats) / replicas  # the whole global micro-batch (tp/cp copies counted once)
        g_counts, g_prob_sum, g_tokens, g_dropped = stats[:num_experts], stats[num_experts:-2], stats[-2], stats[-1]
        f = g_counts / (g_tokens * k).clamp(min=1)
        aux = float(num_experts * (f * g_prob_sum / g_tokens.clamp(min=1)).sum())
        w = self._window
        w["aux"] += aux
        w["aux_n"] += 1
        w["counts"] = g_counts.detach().cpu() if w["counts"] is None else w["counts"] + g_counts.detach().cpu()
        w["dropped"] += int(g_dropped)
        if self.aux_loss_weight and weights.requires_grad:
            # this rank's share of the global loss; the core scales the LM loss by dp_size (FSDP averages
            # gradients over the dp ranks), so the same here; micro-batches of a step are averaged
            dp = ctx.dp_size if ctx is not None else 1
            local = num_experts * (f.detach() * probs.sum(0) / g_tokens.clamp(min=1)).sum()
            term = local * (self.aux_loss_weight * dp / self._accum_steps())
            weights = _AddAuxGrad.apply(weights, term)
            return (logits, weights, indices, *output[3:])
        return None

    # -- metrics ---------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Routing statistics since the last logged step (the same on every rank)."""
        w = self._window
        if not self.stats or not w["aux_n"]:
            return {}
        counts = w["counts"]
        forwards = max(w["aux_n"] / len(self.layers), 1)  # router calls / MoE layers
        balanced = float(counts.sum()) / len(counts)
        out = {
            "moe_aux_loss": w["aux"] / forwards,
            "moe_aux_loss_weight": self.aux_loss_weight,
            "moe_tokens_per_expert_min": float(counts.min()) / balanced if balanced else 0.0,
            "moe_tokens_per_expert_max": float(counts.max()) / balanced if balanced else 0.0,
            "moe_dropped_tokens": w["dropped"],
        }
        self.last_counts = counts.tolist()
        self._reset()
        return out


class _AddAuxGrad(torch.autograd.Function):
    """Identity on ``x``; in backward the scalar ``aux`` gets gradient 1, so its graph (the router
    probabilities) is differentiated as if ``aux`` had been added to the loss."""

    @staticmethod
    def forward(ctx: Any, x: Any, aux: Any) -> Any:
        ctx.aux_dtype = aux.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        return grad, torch.ones((), dtype=ctx.aux_dtype, device=grad.device)
