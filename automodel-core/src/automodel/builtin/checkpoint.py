"""The ``default`` checkpointer: training state with torch.distributed.checkpoint, export with
safetensors through ``save_pretrained``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any


class Checkpointer:
    """Checkpoints under ``dir`` (default ``<output_dir>/checkpoints``) as ``step_<N>/``.

    ``keep_last`` most recent checkpoints are kept; ``resume`` is ``auto`` (newest checkpoint in
    ``dir``), ``never`` or a checkpoint path; ``export_hf`` writes ``<output_dir>/hf`` at the end.
    """

    def __init__(
        self,
        ctx: Any,
        dir: str | None = None,
        keep_last: int | None = 2,
        resume: str = "auto",
        export_hf: bool = True,
        save_final: bool = True,
    ):
        self.ctx = ctx
        self.dir = Path(dir) if dir else Path(ctx.output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.resume = resume
        self.export_hf = export_hf
        self.save_final = save_final

    # -- training state ---------------------------------------------------------------------------

    def _dcp_state(self, state: dict[str, Any]) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(state["model"], state["optimizer"])
        out = {"model": model_sd, "optimizer": optim_sd}
        for key, obj in state.items():
            if key not in out and hasattr(obj, "state_dict"):
                out[key] = obj.state_dict()
        return out

    def steps(self) -> list[int]:
        found = [int(m.group(1)) for p in self.dir.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
        return sorted(found)

    def save(self, state: dict[str, Any], step: int) -> Path:
        import torch.distributed.checkpoint as dcp

        path = self.dir / f"step_{step}"
        dcp.save(self._dcp_state(state), checkpoint_id=str(path))
        if self.ctx.is_main and self.keep_last:
            for old in self.steps()[: -self.keep_last]:
                shutil.rmtree(self.dir / f"step_{old}", ignore_errors=True)
        return path

    def load(self, state: dict[str, Any]) -> int | None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if self.resume == "never":
            return None
        if self.resume == "auto":
            steps = self.steps()
            if not steps:
                return None
            path = self.dir / f"step_{steps[-1]}"
        else:
            path = Path(self.resume)
        sd = self._dcp_state(state)
        dcp.load(sd, checkpoint_id=str(path))
        set_state_dict(state["model"], state["optimizer"], model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
        for key, obj in state.items():
            if key in sd and key not in ("model", "optimizer") and hasattr(obj, "load_state_dict"):
                obj.load_state_dict(sd[key])
        return int(path.name.rsplit("_", 1)[-1])

    # -- export -----------------------------------------------------------------------------------

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
        """Consolidated safetensors + config + tokenizer that ``from_pretrained`` loads as is."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from automodel.builtin.models import unwrap

        out = Path(out_dir)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            unwrap(model).save_pretrained(out, state_dict=full)
            tokenizer.save_pretrained(out)
        return out
