"""The fused, token-chunked KD loss against a plain PyTorch reference on full logits
(``torch.nn.functional`` log_softmax / kl_div / cross_entropy, gradients by autograd)."""

from __future__ import annotations

import itertools

import pytest
import torch
from automodel_kd.fused import KDOptions, fused_linear_kd, reference_kd_loss

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def data(batch=2, seq=29, ds=16, dt=24, vocab=53, dtype=torch.float64, seed=0, packed=False):
    """Student/teacher hidden states and lm_heads; labels with prompt/padding (-100) and, ``packed``,
    several samples per row separated by -100 (what the packing collator leaves at boundaries)."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(batch, seq, ds, generator=g, dtype=dtype)
    ws = torch.randn(vocab, ds, generator=g, dtype=dtype) / ds**0.5
    ht = torch.randn(batch, seq, dt, generator=g, dtype=dtype)
    wt = torch.randn(vocab, dt, generator=g, dtype=dtype) / dt**0.5 * 2
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[0, :6] = -100  # a prompt
    labels[1, -9:] = -100  # right padding
    if packed:
        labels[:, 12] = -100  # boundary between two packed samples
        labels[0, 13:16] = -100  # the second sample's prompt
    return hs, ws, ht, wt, labels


def both(opts, hs, ws, ht, wt, labels, n=None):
    hs1, ws1 = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    loss = fused_linear_kd(hs1, ws1, ht, wt, labels, n, opts)
    loss.backward()
    hs2, ws2 = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    ref = reference_kd_loss(hs2 @ ws2.T, ht @ wt.T, labels, n, opts)
    ref.backward()
    return (loss, hs1.grad, ws1.grad), (ref, hs2.grad, ws2.grad)


@pytest.mark.parametrize("kind,temperature,kd_weight", [
    (k, t, w) for k, t, w in itertools.product(KINDS, [1.0, 2.5], [0.0, 0.5, 1.0])])
def test_every_option_matches_reference_float64(kind, temperature, kd_weight):
    opts = KDOptions(kind=kind, temperature=temperature, kd_weight=kd_weight, beta=0.3, chunk_size=7)
    got, ref = both(opts, *data(packed=True))
    for a, b, what in zip(got, ref, ("loss", "d hidden", "d lm_head")):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=lambda m, what=what: f"{what}: {m}")
    assert got[1][0, :6].abs().max() == 0 and got[1][1, -9:].abs().max() == 0  # ignored tokens get no gradient


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [None, 1, 16, 1000])
def test_float32_any_chunk_size(kind, chunk):
    opts = KDOptions(kind=kind, temperature=2.0, kd_weight=0.7, chunk_size=chunk)
    got, ref = both(opts, *data(dtype=torch.float32, seq=40, vocab=301))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_beta(beta):
    got, ref = both(KDOptions(kind="jsd", beta=beta, kd_weight=1.0), *data())
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_global_normalizer_and_split_micro_batches():
    """Normalized by a given global label count, two halves of a batch sum to the whole (the loop's
    gradient accumulation)."""
    opts = KDOptions(kind="reverse_kl", temperature=1.5, kd_weight=0.5)
    hs, ws, ht, wt, labels = data()
    n = (labels != -100).sum().double()
    whole, _ = both(opts, hs, ws, ht, wt, labels, n)
    a, _ = both(opts, hs[:1], ws, ht[:1], wt, labels[:1], n)
    b, _ = both(opts, hs[1:], ws, ht[1:], wt, labels[1:], n)
    torch.testing.assert_close(a[0] + b[0], whole[0])
    torch.testing.assert_close(a[2] + b[2], whole[2])


def test_properties_of_the_divergences():
    """Teacher == student: KD is 0 for every kind and only CE remains; the loss grows with disagreement."""
    hs, ws, _, _, labels = data(ds=16, dt=16)
    for kind in KINDS:
        same = fused_linear_kd(hs, ws, hs, ws, labels, opts=KDOptions(kind=kind, kd_weight=1.0))
        assert abs(float(same)) < 1e-12, kind
        other = fused_linear_kd(hs, ws, hs, ws * -1, labels, opts=KDOptions(kind=kind, kd_weight=1.0))
        assert float(other) > 0.1, kind
    ce_only = fused_linear_kd(hs, ws, hs, ws * -1, labels, opts=KDOptions(kd_weight=0.0))
    torch.testing.assert_close(ce_only, torch.nn.functional.cross_entropy((hs @ ws.T).flatten(0, 1), labels.flatten()))


def test_no_grad_path_and_frozen_weight():
    opts = KDOptions(kind="jsd")
    hs, ws, ht, wt, labels = data()
    with torch.no_grad():
        plain = fused_linear_kd(hs, ws, ht, wt, labels, opts=opts)
    h = hs.clone().requires_grad_()
    loss = fused_linear_kd(h, ws, ht, wt, labels, opts=opts)  # lm_head frozen: only dh
    loss.backward()
    torch.testing.assert_close(plain, loss.detach())
    ref_h = hs.clone().requires_grad_()
    reference_kd_loss(ref_h @ ws.T, ht @ wt.T, labels, opts=opts).backward()
    torch.testing.assert_close(h.grad, ref_h.grad)


def test_bf16_weights_close_to_fp32():
    hs, ws, ht, wt, labels = data(dtype=torch.float32, vocab=128)
    opts = KDOptions(temperature=2.0)
    ref = fused_linear_kd(hs, ws, ht, wt, labels, opts=opts)
    w = ws.bfloat16().requires_grad_()
    low = fused_linear_kd(hs.bfloat16(), w, ht.bfloat16(), wt.bfloat16(), labels, opts=opts)
    low.backward()
    assert w.grad.dtype == torch.bfloat16
    assert abs(low.item() - ref.item()) < 2e-2 * abs(ref.item())


def test_bad_shapes_and_labels():
    hs, ws, ht, wt, labels = data()
    with pytest.raises(ValueError, match="same vocabulary"):
        fused_linear_kd(hs, ws, ht, wt[:-1], labels)
    with pytest.raises(ValueError, match="do not match"):
        fused_linear_kd(hs, ws, ht[:, :-1], wt, labels)
    bad = labels.clone()
    bad[0, -1] = ws.shape[0]
    with pytest.raises(ValueError, match="labels must be in"):
        fused_linear_kd(hs, ws, ht, wt, bad)


def test_all_tokens_ignored_gives_zero():
    hs, ws, ht, wt, labels = data()
    h = hs.clone().requires_grad_()
    loss = fused_linear_kd(h, ws, ht, wt, torch.full_like(labels, -100))
    loss.backward()
    assert float(loss) == 0.0 and h.grad.abs().max() == 0
