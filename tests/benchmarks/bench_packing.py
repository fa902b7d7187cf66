"""Loss-bearing tokens/s on Alpaca-like instruction data: automodel packed / unpacked vs the HF Trainer.

    python tests/benchmarks/bench_packing.py            # 16 steps (3 untimed), 4 interleaved rounds
    python tests/benchmarks/bench_packing.py --quick    # 10 steps, 1 round
    python tests/benchmarks/bench_packing.py --contenders packed:sdpa_packed,hf_trainer:sdpa

The data: generated prompt/response pairs whose tokenized lengths (BOS + prompt + response + EOS, char
tokenizer) follow a log-normal with median ~120 and p90 ~350 tokens (Alpaca's shape), prompt ~40% of an
example, the response (the loss) a learnable function of the prompt; examples cut at 512 tokens.

Same model (the 5M Llama of the other benchmarks, fp32), same optimizer (AdamW lr 1e-3, clip 1.0, constant
lr), same effective batch in tokens: unpacked runs take 24 examples per step (8 per micro-batch x 3, as a
Trainer user would set ``per_device_train_batch_size`` and ``gradient_accumulation_steps``), packed runs 2
rows of ``pack_length`` tokens, with ``pack_length`` chosen so that 2 rows hold the real tokens of 24 examples
on average (~4.1K: the data's mean length x 24 / the packing efficiency, rounded to 64).

Contenders (``mode:attention``), each in its own process, in interleaved rounds with the order rotated:

* ``packed:<attn>``: ``automodel run`` with ``packing: true, pack_length`` and ``model.attn_implementation``
  ``sdpa_packed`` (causal SDPA per sample), ``sdpa`` or ``eager`` (transformers' dense block-diagonal mask);
* ``unpacked:<attn>``: ``automodel run`` without packing (rows padded to the longest of the micro-batch);
* ``hf_trainer:<attn>``: ``transformers.Trainer`` with ``DataCollatorForSeq2Seq`` (dynamic padding), the
  same tokenization, logging every step, no eval, no saving.

Reported per contender (median over the timed steps of every round): tokens/s (padding included),
label tokens/s (tokens that carry a loss: the number to compare), the padding fraction of the tensors
trained on, the mean loss of the first and of the last 3 steps (loss per label token), and each label
tokens/s over the HF Trainer's with the same attention. automodel's numbers are its own ``metrics.jsonl``
fields (``tokens_per_s``, ``label_tokens_per_s``); the Trainer's come from a collator that counts the
batches it builds and a callback at every step end. The load average is printed next to every round: on a
shared machine read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import HERE, LLAMA_5M, python_env, run_measured, table

LR = 1e-3
MAX_LENGTH = 512
EXAMPLES_PER_STEP, MICRO = 24, 8
PACKED_ROWS = 2
WARMUP = 3
TEMPLATE = "{prompt}\n"
DEFAULT = "packed:sdpa_packed,packed:sdpa,packed:eager,unpacked:sdpa,hf_trainer:sdpa"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _text(rng: random.Random, n: int) -> str:
    words: list[str] = []
    size = 0
    while size < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7)))
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:max(n, 1)]


def _respond(prompt: str, n: int) -> str:
    """The response: the prompt's words reversed, then repeated, cut to ``n`` characters (learnable)."""
    words = prompt.split()
    base = " ".join(w[::-1] for w in reversed(words)) or "a"
    return ((base + " ") * (n // (len(base) + 1) + 1))[:max(n, 1)]


def write_data(path: Path, n: int, seed: int = 0) -> list[int]:
    """``n`` Alpaca-like examples; returns their token lengths (BOS + prompt + newline + response + EOS)."""
    rng = random.Random(seed)
    sigma = math.log(350 / 120) / 1.2816  # p90 / median of a log-normal
    lengths = []
    with path.open("w") as f:
        for _ in range(n):
            total = max(12, min(1000, int(round(math.exp(rng.gauss(math.log(120), sigma))))))
            prompt_len = max(4, int(total * rng.uniform(0.3, 0.5)))
            prompt = _text(rng, prompt_len)
            response = _respond(prompt, total - prompt_len - 3)
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
            lengths.append(1 + len(prompt) + 1 + len(response) + 1)
    return lengths


# --------------------------------------------------------------------------------------------------
# The HF Trainer worker (its own process)
# --------------------------------------------------------------------------------------------------


def worker_hf_trainer(a: argparse.Namespace) -> None:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines()]

    def encode(r: dict[str, str]) -> dict[str, list[int]]:
        p = [tok.bos_token_id] + tok.encode(TEMPLATE.format(prompt=r["prompt"]), add_special_tokens=False)
        resp = tok.encode(r["response"], add_special_tokens=False) + [tok.eos_token_id]
        ids, labels = (p + resp)[:MAX_LENGTH], ([-100] * len(p) + resp)[:MAX_LENGTH]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    data = [encode(r) for r in rows]
    stats: list[tuple[int, int, int]] = []  # per micro-batch: tokens (padded), real tokens, label tokens
    seq2seq = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = seq2seq(features)
        stats.append((batch["input_ids"].numel(), int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != -100).sum())))
        return batch

    times: list[float] = []
    losses: list[float] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, attn_implementation=a.attn)
    args = TrainingArguments(
        output_dir=str(Path(a.out).parent / "hf_trainer"), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=EXAMPLES_PER_STEP // MICRO, max_steps=a.steps, learning_rate=LR, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch", logging_strategy="steps",
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=0, data_seed=0,
    )
    start = time.time()
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Record()]).train()
    accum = EXAMPLES_PER_STEP // MICRO
    steps = []
    for i, t in enumerate(times):
        part = stats[i * accum:(i + 1) * accum]
        steps.append({"end": t, "tokens": sum(s[0] for s in part), "real": sum(s[1] for s in part), "labels": sum(s[2] for s in part)})
    Path(a.out).write_text(json.dumps({"start": start, "steps": steps, "losses": losses}))


# --------------------------------------------------------------------------------------------------
# automodel runs
# --------------------------------------------------------------------------------------------------


def automodel_config(root: Path, a: argparse.Namespace, mode: str, attn: str, pack_length: int) -> Path:
    import yaml

    packed = mode == "packed"
    cfg = {
        "seed": 0, "output_dir": str(root / f"am_{mode}_{attn}"),
        "model": {"name": "hf", "pretrained": str(a.model_dir), "attn_implementation": attn},
        "dataset": {"name": "instruction", "path": str(a.data), "prompt": "prompt", "response": "response",
                    "prompt_template": TEMPLATE, "max_length": MAX_LENGTH, "cache_dir": str(root.parent / "hf_cache"),
                    **({"packing": True, "pack_length": pack_length} if packed else {})},
        "optimizer": {"name": "adamw", "lr": LR, "weight_decay": 0.0}, "lr_scheduler": {"name": "constant"},
        "clip_grad_norm": 1.0,
        "step_scheduler": {"global_batch_size": PACKED_ROWS if packed else EXAMPLES_PER_STEP,
                           "local_batch_size": 1 if packed else MICRO, "max_steps": a.steps, "log_every_steps": 1},
        "checkpoint": {"export_hf": False, "save_final": False}, "loggers": [{"name": "jsonl"}],
    }
    path = root / f"am_{mode}_{attn}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def padding_fractions(a: argparse.Namespace, pack_length: int) -> dict[str, float]:
    """The share of padding in the micro-batches automodel's runs train on (same data, seed and order as
    the runs: the builtin dataset and TrainData rebuilt here), packed and unpacked."""
    import torch
    from automodel.builtin.datasets import instruction
    from automodel.context import Context
    from automodel.data import Collator, TrainData
    from automodel.state import TrainState
    from automodel.testing import char_tokenizer

    out = {}
    for mode in ("packed", "unpacked"):
        kw = {"packing": True, "pack_length": pack_length} if mode == "packed" else {}
        ds = instruction(Context(device=torch.device("cpu")), char_tokenizer(), str(a.data), prompt="prompt", response="response",
                         prompt_template=TEMPLATE, max_length=MAX_LENGTH, cache_dir=str(Path(a.root) / "hf_cache"), **kw)
        micro = 1 if mode == "packed" else MICRO
        per_step = PACKED_ROWS if mode == "packed" else EXAMPLES_PER_STEP
        data = TrainData(ds, Collator(pad_id=0), micro, 0, 1, seed=0)
        it = data.batches(TrainState())
        total = real = 0
        for _ in range(a.steps * per_step // micro):
            b = next(it)
            total += b["input_ids"].numel()
            real += sum(len(ds[i]["input_ids"]) for i in data.sampler.recent)  # the rows of this micro-batch
        out[mode] = 1 - real / total
    return out


def run_automodel(root: Path, a: argparse.Namespace, mode: str, attn: str, pack_length: int) -> dict[str, Any]:
    from _common import automodel_exe

    cfg = automodel_config(root, a, mode, attn, pack_length)
    rc, start, peak, text = run_measured([*automodel_exe(), "run", str(cfg)], env=python_env(), cwd=root, timeout=a.timeout)
    metrics = root / f"am_{mode}_{attn}" / "metrics.jsonl"
    if rc != 0 or not metrics.exists():
        return {"error": f"exit {rc}: {text.strip().splitlines()[-1] if text.strip() else ''}", "output": text[-3000:]}
    recs = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    timed = recs[WARMUP:]
    return {"tps": statistics.median(r["tokens_per_s"] for r in timed), "ltps": statistics.median(r["label_tokens_per_s"] for r in timed),
            "losses": [r["loss"] for r in recs], "peak_gb": peak}


def run_hf(root: Path, a: argparse.Namespace, attn: str) -> dict[str, Any]:
    out = root / f"hf_{attn}.json"
    cmd = [sys.executable, str(HERE / "bench_packing.py"), "--worker", "--out", str(out), "--model-dir", str(a.model_dir),
           "--data", str(a.data), "--steps", str(a.steps), "--attn", attn]
    rc, start, peak, text = run_measured(cmd, env=python_env(), cwd=root, timeout=a.timeout)
    if rc != 0 or not out.exists():
        return {"error": f"exit {rc}: {text.strip().splitlines()[-1] if text.strip() else ''}", "output": text[-3000:]}
    res = json.loads(out.read_text())
    steps = res["steps"]
    timed = [(b, b["end"] - p["end"]) for p, b in zip(steps, steps[1:])][WARMUP - 1:]
    return {"tps": statistics.median(b["tokens"] / dt for b, dt in timed), "ltps": statistics.median(b["labels"] / dt for b, dt in timed),
            "padding": 1 - sum(s["real"] for s in steps) / sum(s["tokens"] for s in steps), "losses": res["losses"], "peak_gb": peak}


def step_costs(model_dir: Path, rows: int, length: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Forward + backward of the model on the same ``rows x length`` tokens, per attention implementation:
    (seconds with a plain causal row, seconds with the rows packed from Alpaca-like samples). Interleaved,
    median of ``repeats``: what packing's sample separation costs over the causal kernel."""
    import torch
    from automodel.attention import register
    from transformers import AutoModelForCausalLM

    register()
    rng = random.Random(1)
    sigma = math.log(350 / 120) / 1.2816
    pos = []
    for _ in range(rows):
        row: list[int] = []
        while len(row) < length:
            n = max(12, min(MAX_LENGTH, int(math.exp(rng.gauss(math.log(120), sigma)))))
            row += list(range(min(n, length - len(row))))
        pos.append(row)
    packed_pos = torch.tensor(pos)
    causal_pos = torch.arange(length).expand(rows, -1)
    ids = torch.randint(4, LLAMA_5M["vocab_size"], (rows, length), generator=torch.Generator().manual_seed(0))
    models = {impl: AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=impl).train()
              for impl in ("sdpa_packed", "sdpa", "eager")}
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(repeats + 1):
        for impl, m in models.items():
            for kind, p in (("causal", causal_pos), ("packed", packed_pos)):
                start = time.perf_counter()
                m(input_ids=ids, position_ids=p, labels=ids, use_cache=False).loss.backward()
                if i:  # the first round warms up
                    times.setdefault((impl, kind), []).append(time.perf_counter() - start)
                m.zero_grad(set_to_none=True)
    return {impl: (statistics.median(times[(impl, "causal")]), statistics.median(times[(impl, "packed")])) for impl in models}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="steps per run, the first 3 untimed (default 16; --quick 10)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4; --quick 1)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--contenders", default=DEFAULT)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-step-costs", dest="step_costs", action="store_false", help="skip the per-attention step cost table")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--attn", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker_hf_trainer(a)
        return []
    a.steps = a.steps or (10 if a.quick else 16)
    a.rounds = a.rounds or (1 if a.quick else 4)
    names = [c for c in a.contenders.split(",") if c]
    for c in names:
        mode, _, attn = c.partition(":")
        if mode not in ("packed", "unpacked", "hf_trainer") or not attn:
            ap.error(f"contender {c!r}: write mode:attention, mode one of packed, unpacked, hf_trainer")

    from automodel.testing import tiny_model

    root = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    a.root = str(root)
    a.data = root / "alpaca_like.jsonl"
    lengths = sorted(write_data(a.data, a.examples))
    a.model_dir = tiny_model(root, **LLAMA_5M)
    cut = [min(n, MAX_LENGTH) for n in lengths]
    mean = sum(cut) / len(cut)
    # 2 packed rows hold the real tokens of EXAMPLES_PER_STEP examples (best-fit packing of this data: ~0.99 full)
    pack_length = int(round(mean * EXAMPLES_PER_STEP / PACKED_ROWS / 0.99 / 64)) * 64
    print(f"data: {len(lengths)} examples, tokens per example median {lengths[len(lengths) // 2]}, p90 "
          f"{lengths[int(0.9 * len(lengths))]}, mean {mean:.0f} (cut at {MAX_LENGTH}); model Llama 5M fp32; "
          f"unpacked {EXAMPLES_PER_STEP} examples/step ({MICRO} x {EXAMPLES_PER_STEP // MICRO}), packed {PACKED_ROWS} rows x "
          f"{pack_length} tokens/step; {a.steps} steps ({WARMUP} untimed), {a.rounds} round(s)", flush=True)
    padding = padding_fractions(a, pack_length)
    if a.step_costs:
        length = 1024
        costs = step_costs(a.model_dir, 2, length, 3)
        print(f"\none forward + backward, 2 x {length} tokens, same rows causal vs packed (~{length // 170} samples per row); "
              f"load average {os.getloadavg()[0]:.1f}")
        print(table([[impl, f"{1e3 * c:,.0f}", f"{1e3 * p:,.0f}", f"{p / c:.2f}x"] for impl, (c, p) in costs.items()],
                    ["attention", "causal ms", "packed ms", "packed / causal"]))
        print()

    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    loads = []
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        load_before = os.getloadavg()[0]
        for name in order:
            mode, _, attn = name.partition(":")
            (root / f"r{r}").mkdir(exist_ok=True)
            res = run_hf(root / f"r{r}", a, attn) if mode == "hf_trainer" else run_automodel(root / f"r{r}", a, mode, attn, pack_length)
            results[name].append(res)
            if "error" in res:
                print(f"  round {r + 1}: {name:<20} failed: {res['error']}", flush=True)
            else:
                print(f"  round {r + 1}: {name:<20} {res['tps']:>8,.0f} tok/s {res['ltps']:>8,.0f} label tok/s  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        loads.append((load_before, os.getloadavg()[0]))
        print(f"round {r + 1}: load average (1 min) {load_before:.1f} at the start, {loads[-1][1]:.1f} at the end", flush=True)

    rows = []
    for name, rs in results.items():
        mode, _, attn = name.partition(":")
        ok = [x for x in rs if "error" not in x]
        if not ok:
            rows.append({"name": name, "error": rs[0]["error"] if rs else "not run"})
            continue
        losses = ok[-1]["losses"]
        rows.append({"name": name, "mode": mode, "attn": attn, "tokens_per_s": statistics.median(x["tps"] for x in ok),
                     "label_tokens_per_s": statistics.median(x["ltps"] for x in ok), "runs_label_tps": [x["ltps"] for x in ok],
                     "padding": ok[-1].get("padding", padding.get(mode)), "first_loss": statistics.mean(losses[:3]),
                     "last_loss": statistics.mean(losses[-3:]), "peak_gb": statistics.median(x["peak_gb"] for x in ok)})
    hf = {r["attn"]: r for r in rows if r.get("mode") == "hf_trainer"}
    any_hf = next(iter(hf.values()), None)
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["name"], "-", "-", "-", "-", "-", "-", "-"])
            continue
        base = hf.get(r["attn"], any_hf)
        body.append([r["name"], f"{r['tokens_per_s']:,.0f}", f"{r['label_tokens_per_s']:,.0f}",
                     f"{r['label_tokens_per_s'] / base['label_tokens_per_s']:.2f}x" if base else "-",
                     f"{100 * r['padding']:.1f}%", f"{r['first_loss']:.3f}", f"{r['last_loss']:.3f}", f"{r['peak_gb']:.2f}"])
    print()
    print(table(body, ["contender", "tokens/s", "label tok/s", "vs HF label tok/s", "padding", "loss first 3", "loss last 3", "peak RSS GiB"]))
    print(f"load average (1 min) per round, start/end: {', '.join(f'{x:.1f}/{y:.1f}' for x, y in loads)}; "
          f"per-round label tok/s: " + "; ".join(f"{r['name']} {', '.join(f'{v:,.0f}' for v in r['runs_label_tps'])}"
                                                for r in rows if "runs_label_tps" in r))
    # the same ratio round by round (each contender against the Trainer's run of the same round): the
    # rounds see different machine states, so this is the spread to read a difference against
    for name, rs in results.items():
        mode, _, attn = name.partition(":")
        base = results.get(f"hf_trainer:{attn}") or next((v for k, v in results.items() if k.startswith("hf_trainer:")), None)
        if mode == "hf_trainer" or not base:
            continue
        ratios = [x["ltps"] / b["ltps"] for x, b in zip(rs, base) if "error" not in x and "error" not in b]
        if ratios:
            print(f"  {name}: label tok/s / HF Trainer's per round {', '.join(f'{v:.2f}x' for v in ratios)}; "
                  f"median {statistics.median(ratios):.2f}x, lowest {min(ratios):.2f}x")
    for r in rows:
        if "error" in r:
            print(f"  {r['name']}: {r['error']}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
