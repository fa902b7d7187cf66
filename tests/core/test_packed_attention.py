"""``sdpa_packed`` (automodel.attention): the same outputs and gradients as transformers' ``sdpa`` with its
block-diagonal mask on packed rows, the same as ``sdpa`` on padded and unpacked rows, and a training run
that selects it by name from the config."""

from __future__ import annotations

from pathlib import Path

import torch
from automodel import config
from automodel.attention import NAME, register, sample_spans
from automodel.data import Collator
from automodel.packing import pack
from automodel.plugins import load_plugins
from automodel.testing import make_config
from automodel.train import Trainer

SPEC = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)  # grouped-query attention: 2 heads per kv head


def model(impl: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    register()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SPEC), attn_implementation=impl).train()


def samples(lengths: list[int]) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n in lengths:
        ids = torch.randint(3, SPEC["vocab_size"], (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    return out


def loss_and_grads(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    batch = dict(batch)
    labels = batch.pop("labels")
    m.zero_grad()
    logits = m(**batch, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    loss.sum().backward()
    return loss.view(labels.shape).detach(), [p.grad.clone() for p in m.parameters()]


def test_sample_spans_follow_transformers_packing_rule():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert sample_spans(pos, 2) == [[(0, 3), (3, 5), (5, 9)], [(0, 9)]]
    # a position that jumps (not only a restart at 0) starts a sample, as transformers detects packing
    assert sample_spans(torch.tensor([[5, 6, 7, 2, 3]]), 1) == [[(0, 3), (3, 5)]]
    assert sample_spans(torch.arange(4)[None], 3) == [[(0, 4)]] * 3  # [1, tokens] broadcast over rows


def test_packed_rows_match_sdpa_with_its_block_diagonal_mask():
    data = samples([5, 9, 3, 12, 7, 20, 2, 6])
    packed = pack(data, 24)
    rows = [packed[i] for i in range(len(packed))]
    batch = Collator(pad_id=0)(rows)  # rows of unequal length: padding is a sample of its own
    assert "attention_mask" not in batch and bool((batch["position_ids"] == 0).sum(1).gt(2).all())
    ref_loss, ref_grads = loss_and_grads(model("sdpa"), batch)
    loss, grads = loss_and_grads(model(NAME), batch)
    mask = batch["labels"] != -100
    assert torch.allclose(loss[mask], ref_loss[mask], atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
    # the control: one causal call over the whole row (no sample boundaries) gives other losses
    plain = {k: v for k, v in batch.items() if k != "position_ids"}
    leaked, _ = loss_and_grads(model(NAME), plain)
    assert (leaked[mask] - ref_loss[mask]).abs().max() > 1e-3


def test_packed_backward_concatenates_sample_gradients():
    """The per-sample calls' gradients are concatenated back into the row, not summed from zero-filled
    full-row tensors (one per sample, as a slice's backward makes): that cost grew with samples x row
    length and made a 2 x 1920-token packed step 1.1x slower."""
    from automodel.attention import packed_sdpa_attention
    from torch.profiler import profile

    q, k, v = (torch.randn(2, 4, 48, 16, requires_grad=True) for _ in range(3))
    pos = torch.tensor([list(range(10)) + list(range(30)) + list(range(8)), list(range(48))])
    out, _ = packed_sdpa_attention(torch.nn.Module(), q, k, v, None, position_ids=pos)
    with profile() as prof:
        out.square().sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "SplitWithSizesBackward0" in ops and "SliceBackward0" not in ops, sorted(ops)
    # and each sample attends only to itself: the second sample's output does not change with the first's keys
    ref = torch.nn.functional.scaled_dot_product_attention(q[:1, :, 10:40], k[:1, :, 10:40], v[:1, :, 10:40], is_causal=True)
    assert torch.allclose(out[:1, 10:40].transpose(1, 2), ref, atol=1e-6)


def test_compiled_blocks_do_not_recompile_for_new_sample_boundaries():
    """The compile transform compiles each block's forward; the attention inside runs eagerly (its sample
    boundaries change with every batch), so new boundaries reuse the compiled graphs. Traced into the
    graph, every new set of boundaries recompiled (a CPU run spent 300 s compiling instead of 17 s)."""
    from torch._dynamo.testing import CompileCounter

    m = model(NAME)
    counter = CompileCounter()  # a backend that counts the graphs Dynamo hands it
    for layer in m.model.layers:
        layer.forward = torch.compile(layer.forward, backend=counter)
    graphs = []
    for lengths in ([10, 30, 8], [20, 28], [5, 5, 5, 5, 28]):
        pos = torch.cat([torch.arange(n) for n in lengths])[None]
        ids = torch.randint(3, SPEC["vocab_size"], pos.shape)
        m(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss.backward()
        graphs.append(counter.frame_count)
    assert graphs[0] > 0 and graphs == [graphs[0]] * 3, graphs


def test_padded_unpacked_batch_and_generation_match_sdpa():
    batch = Collator(pad_id=0)(samples([5, 11, 8]))
    assert "attention_mask" in batch  # padding: the sdpa path with its mask
    ref_loss, ref_grads = loss_and_grads(model("sdpa"), batch)
    loss, grads = loss_and_grads(model(NAME), batch)
    mask = batch["labels"] != -100
    assert torch.allclose(loss[mask], ref_loss[mask], atol=1e-5)
    assert all(torch.allclose(g, r, atol=1e-5, rtol=1e-4) for g, r in zip(grads, ref_grads))
    prompt = torch.tensor([[5, 9, 12, 7]])
    outs = [model(impl).eval().generate(prompt, max_new_tokens=5, do_sample=False) for impl in ("sdpa", NAME)]
    assert torch.equal(outs[0], outs[1])  # decoding with a cache: transformers' sdpa path


def test_a_packed_run_selects_sdpa_packed_by_name(tmp_path: Path, tiny_model_dir: Path):
    plugins = load_plugins()
    cfg = make_config(tmp_path, tiny_model_dir, model={"name": "hf", "pretrained": str(tiny_model_dir), "attn_implementation": NAME},
                      dataset={"name": "instruction", "path": str(tmp_path / "data.jsonl"), "prompt": "question",
                               "response": "answer", "packing": True, "max_length": 32, "pack_length": 128})
    validated = config.validate(config.load(cfg), plugins)
    t = Trainer(validated)
    try:
        assert t.hf_model.config._attn_implementation == NAME
        micro = [t.data.loader.collate_fn([t.data.dataset[i] for i in range(4)])]
        assert micro[0]["input_ids"].shape[1] <= 128 and int((micro[0]["position_ids"] == 0).sum()) > 4
        metrics = t.log(1, t.train_step(micro))
        assert metrics["loss"] > 0 and metrics["label_tokens"] == int((micro[0]["labels"] != -100).sum())
    finally:
        t._finish({}, teardown=False)


def test_pack_length_sets_the_row_length_apart_from_max_length(tmp_path: Path):
    from automodel.builtin.datasets import instruction
    from automodel.context import Context
    from automodel.testing import char_tokenizer, write_task_data

    path = str(write_task_data(tmp_path / "data.jsonl", n=64))
    args = {"path": path, "prompt": "question", "response": "answer", "max_length": 24, "cache_dir": str(tmp_path / "c")}
    packed = instruction(Context(device=torch.device("cpu")), char_tokenizer(), packing=True, pack_length=96, **args)
    lengths = [len(packed[i]["input_ids"]) for i in range(len(packed))]
    assert max(lengths) <= 96 and max(lengths) > 24 and packed.capacity == 96
    assert all(n <= 24 for b in packed.bins for n in (len(packed.data[i]["input_ids"]) for i in b))  # examples cut at 24
    validate = instruction.validate_args
    assert validate({**args, "pack_length": 96})[0][:2] == ("pack_length", "is set (96) but packing is off")
    (key, problem, hint), = validate({**args, "packing": True, "pack_length": 16})
    assert key == "pack_length" and "shorter than max_length (24)" in problem
    assert validate({**args, "packing": True, "pack_length": 96}) == []
