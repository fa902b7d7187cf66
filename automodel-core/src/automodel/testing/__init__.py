"""Test kit for automodel and its plugins: tiny models, tiny data, configs and CLI runs, all offline.

    from automodel.testing import tiny_model, write_task_data, make_config, run_cli, read_metrics

    def test_my_loss_trains(tmp_path):
        model_dir = tiny_model(tmp_path)
        cfg = make_config(tmp_path, model_dir, loss={"name": "my_loss"})
        run_cli("run", cfg, cwd=tmp_path)
        losses = [m["loss"] for m in read_metrics(tmp_path / "run")]
        assert losses[-1] < losses[0]
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.ascii_lowercase + string.digits + " :\n.,?!-")
VOCAB_SIZE = len(SPECIALS) + len(CHARS)  # 48

TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def char_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` (48 tokens), built in memory."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_model(directory: str | os.PathLike[str], seed: int = 0, **config: Any) -> Path:
    """Save a randomly initialized tiny Llama (override fields with ``config``) and the char tokenizer
    to ``directory/tiny-llama``; returns that path (usable as ``model.pretrained``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(directory) / "tiny-llama"
    spec = {**TINY_LLAMA, **config}
    model_type = spec.pop("model_type")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **spec))
    model.save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out


def write_task_data(path: str | os.PathLike[str], n: int = 256, seed: int = 0) -> Path:
    """A jsonl file of word-reversal examples: ``{"question": "reverse abc", "answer": "cba"}``."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"question": f"reverse {w}", "answer": w[::-1]}) + "\n")
    return path


def make_config(
    directory: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None, name: str = "config.yaml", **sections: Any
) -> Path:
    """Write a small, fast training config to ``directory/name`` and return its path.

    Defaults: the tiny model at ``model_dir`` (``model.pretrained``), 256 reversal examples,
    global batch 8 = local 4 x 2 accumulation, 6 steps, logging every step, no validation, output in
    ``directory/run``. Every keyword replaces the whole section of the same name.
    """
    directory = Path(directory)
    data = write_task_data(directory / "data.jsonl")
    cfg: dict[str, Any] = {
        "seed": 1234,
        "output_dir": str(directory / "run"),
        "model": {"name": "hf", "pretrained": str(model_dir)} if model_dir else {"name": "hf"},
        "dataset": {"name": "instruction", "path": str(data), "prompt": "question", "response": "answer", "prompt_template": "{prompt}\n"},
        "optimizer": {"name": "adamw", "lr": 1.0e-3},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 6, "log_every_steps": 1},
        "checkpoint": {"export_hf": False, "save_final": False},
        "loggers": [{"name": "jsonl"}],
    }
    cfg.update(sections)
    path = directory / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(*args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m automodel ARGS`` in a subprocess; with ``check`` a non-zero exit raises with its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("AUTOMODEL_LAUNCHED", None)
    proc = subprocess.run([sys.executable, "-m", "automodel", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"automodel {' '.join(map(str, args))} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def invoke_cli(args: list[str], cwd: str | os.PathLike[str]) -> tuple[int, str, str]:
    """``automodel ARGS`` in this process, from ``cwd``: (exit code, stdout, stderr). Faster than
    :func:`run_cli` (no new interpreter, torch imported once) for commands that do not train."""
    import contextlib
    import io

    from automodel.cli import _main

    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                _main(args, debug=False)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def read_metrics(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The training-step records (those with ``loss``) of ``<output_dir>/metrics.jsonl``."""
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def exit_without_teardown() -> None:
    """End a torchrun check script that has written everything, with exit code 0 and without
    interpreter teardown (see :func:`automodel.launch.exit_now`)."""
    from automodel.launch import exit_now

    exit_now(0)


from automodel.testing.conformance import Report, check_plugin, loss_call  # noqa: E402  (it imports the helpers above)

__all__ = ["TINY_LLAMA", "VOCAB_SIZE", "Report", "char_tokenizer", "check_plugin", "invoke_cli", "loss_call", "make_config",
           "read_metrics", "run_cli", "tiny_model", "write_task_data"]
