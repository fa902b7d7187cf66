"""automodel-lora: the ``lora`` model transform (LoRA / DoRA adapters through ``peft``).

    transforms:
      - {name: lora, r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj]}

Registration only: nothing here imports torch or peft.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_model_transforms(register):
    register(
        "lora",
        "automodel_lora.transform:LoRA",
        description="LoRA / DoRA adapters (peft); exports a PEFT adapter directory (+ merged model)",
    )
