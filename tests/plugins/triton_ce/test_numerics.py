"""triton_ce (Triton interpreter on CPU) and chunked_ce match cross-entropy on the full logits."""

from __future__ import annotations

import os

import pytest
import torch
from triton_ce_reference import reference_loss, torch_ce

BACKENDS = ["triton_ce", "chunked_ce"]


def make_loss(name: str, **kw):
    from automodel_triton_ce.loss import ChunkedCrossEntropy, FusedLinearCrossEntropy

    return {"triton_ce": FusedLinearCrossEntropy, "chunked_ce": ChunkedCrossEntropy}[name](**kw)


def run(loss_fn, h, w, labels, n, scale=1.0):
    """Loss and gradients of ``scale * loss`` (the loop multiplies by dp_size before backward)."""
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = loss_fn(h, w, labels, n)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def fused(loss):
    return lambda h, w, y, n: loss(labels=y, num_label_tokens=n, hidden_states=h, lm_head_weight=w)


def data(tokens, hidden, vocab, ignore_every=3, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*(shape or (tokens,)), hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    y = torch.randint(0, vocab, h.shape[:-1], generator=g)
    if ignore_every:
        y.view(-1)[::ignore_every] = -100
    return h, w, y


# tokens, hidden, vocab, chunk_size (vocabulary entries per chunk): vocab 300/257/129 are not
# multiples of the 128-wide CPU block, chunks 100/50/96 leave a ragged last chunk (and 50 a partial
# Triton block), vocab 7 is smaller than one block.
SHAPES = [(64, 64, 300, None), (64, 32, 257, 100), (37, 16, 129, 50), (8, 8, 7, None), (40, 64, 256, 96)]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("tokens,hidden,vocab,chunk", SHAPES)
def test_matches_torch_cross_entropy(name, tokens, hidden, vocab, chunk):
    h, w, y = data(tokens, hidden, vocab)
    n = torch.tensor(float((y != -100).sum()) + 5.0)  # a global count larger than this micro-batch's
    loss, gh, gw = run(fused(make_loss(name, chunk_size=chunk)), h, w, y, n, scale=2.0)
    ref, rh, rw = run(torch_ce, h, w, y, n, scale=2.0)
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gh, rh, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-4)
    assert gh.abs().sum() > 0 and gw.abs().sum() > 0


@pytest.mark.parametrize("name", BACKENDS)
def test_batch_seq_layout_and_mean_default(name):
    """[batch, seq, hidden] input as the loop passes it; num_label_tokens=None means a mean."""
    h, w, y = data(0, 16, 100, shape=(3, 7))
    loss, gh, gw = run(fused(make_loss(name)), h, w, y, None)
    n = (y != -100).sum()
    ref, rh, rw = run(torch_ce, h, w, y, n)
    assert gh.shape == h.shape
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gh, rh, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", BACKENDS)
def test_single_token(name):
    h, w, y = data(1, 16, 100, ignore_every=0)
    loss, gh, gw = run(fused(make_loss(name)), h, w, y, torch.tensor(1.0))
    ref, rh, rw = run(torch_ce, h, w, y, torch.tensor(1.0))
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gh, rh, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", BACKENDS)
def test_all_tokens_ignored(name):
    h, w, y = data(12, 16, 50)
    y[:] = -100
    loss, gh, gw = run(fused(make_loss(name)), h, w, y, torch.tensor(1.0))
    assert loss.item() == 0.0
    assert torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


OPTIONS = [
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"softcap": 2.0},
    {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 3.0},
]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o))
def test_options_match_reference(name, options):
    h, w, y = data(48, 32, 257, seed=1)
    w = w * 4  # large logits so that soft-capping matters
    n = torch.tensor(float((y != -100).sum()))
    loss, gh, gw = run(fused(make_loss(name, chunk_size=100, **options)), h, w, y, n)
    ref, rh, rw = run(lambda h, w, y, n: reference_loss(h, w, y, n, **options), h, w, y, n)
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gh, rh, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-4)
    if set(options) == {"label_smoothing"}:  # and the plain-ops reference agrees with torch itself
        torch.testing.assert_close(ref, torch_ce(h, w, y, n, label_smoothing=options["label_smoothing"]))


def test_softcap_changes_the_loss():
    h, w, y = data(16, 16, 100)
    w = w * 8
    plain = make_loss("chunked_ce")(labels=y, num_label_tokens=None, hidden_states=h, lm_head_weight=w)
    capped = make_loss("chunked_ce", softcap=1.0)(labels=y, num_label_tokens=None, hidden_states=h, lm_head_weight=w)
    assert abs(float(plain) - float(capped)) > 0.1


@pytest.mark.parametrize("name", BACKENDS)
def test_bf16_inputs_fp32_accumulation(name):
    """bf16 hidden states and weight: same result as the builtin path (bf16 logits upcast to fp32)."""
    h, w, y = data(64, 64, 300)
    h, w = h.bfloat16(), w.bfloat16()
    n = torch.tensor(float((y != -100).sum()))
    loss, gh, gw = run(fused(make_loss(name, chunk_size=128)), h, w, y, n)
    ref, rh, rw = run(torch_ce, h, w, y, n)
    assert loss.dtype == torch.float32 and gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gh.float(), rh.float(), atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(gw.float(), rw.float(), atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("name", BACKENDS)
def test_tied_embeddings_accumulate(name):
    """The lm_head weight is the input embedding: both gradient paths add up in one .grad."""
    torch.manual_seed(0)
    vocab, hidden = 90, 16
    ids = torch.randint(0, vocab, (2, 9))
    y = torch.randint(0, vocab, (2, 9))
    y[:, :3] = -100
    proj = torch.nn.Linear(hidden, hidden)
    grads = []
    for fn in (fused(make_loss(name)), torch_ce):
        emb = torch.nn.Embedding(vocab, hidden)
        emb.weight.data.copy_(torch.linspace(-1, 1, vocab * hidden).reshape(vocab, hidden))
        h = torch.tanh(proj(emb(ids)))
        fn(h, emb.weight, y, torch.tensor(12.0)).backward()
        grads.append(emb.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
    assert grads[0][ids.unique()].abs().sum() > 0


@pytest.mark.parametrize("name", BACKENDS)
def test_frozen_weight_and_no_grad(name):
    """LoRA-style frozen lm_head (only dh) and validation under no_grad (no gradient work at all)."""
    h, w, y = data(20, 16, 64)
    loss_fn = make_loss(name)
    hh = h.clone().requires_grad_(True)
    loss = loss_fn(labels=y, num_label_tokens=None, hidden_states=hh, lm_head_weight=w)
    loss.backward()
    hr = h.clone().requires_grad_(True)
    torch_ce(hr, w, y, (y != -100).sum()).backward()
    torch.testing.assert_close(hh.grad, hr.grad, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        val = loss_fn(labels=y, num_label_tokens=torch.ones(()), hidden_states=h, lm_head_weight=w.requires_grad_(True))
    assert not val.requires_grad
    torch.testing.assert_close(val, torch_ce(h, w.detach(), y, 1.0), atol=1e-4, rtol=1e-4)


def test_triton_falls_back_with_one_warning(monkeypatch):
    """Without a GPU and without TRITON_INTERPRET, triton_ce warns once and computes with torch ops."""
    from automodel_triton_ce import fused as fused_mod

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(fused_mod, "_warned", False)
    h, w, y = data(8, 8, 20)
    loss_fn = make_loss("triton_ce")
    with pytest.warns(UserWarning, match="chunked_ce"):
        a = loss_fn(labels=y, num_label_tokens=None, hidden_states=h, lm_head_weight=w)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = loss_fn(labels=y, num_label_tokens=None, hidden_states=h, lm_head_weight=w)
    assert a == b
    torch.testing.assert_close(a, torch_ce(h, w, y, (y != -100).sum()))


def test_bad_labels_and_options():
    from automodel.errors import ConfigError

    h, w, y = data(8, 8, 20)
    y[0] = 20
    with pytest.raises(ValueError, match=r"labels must be in \[0, 20\)"):
        make_loss("chunked_ce")(labels=y, num_label_tokens=None, hidden_states=h, lm_head_weight=w)
    with pytest.raises(ConfigError, match="label_smoothing"):
        make_loss("triton_ce", label_smoothing=1.5)
    with pytest.raises(TypeError, match="hidden_states"):
        make_loss("triton_ce")(labels=y, num_label_tokens=None, logits=h)


def test_interpreter_runs_the_triton_kernels():
    """Under TRITON_INTERPRET=1 (set by conftest) triton_ce really uses the Triton kernels on CPU."""
    from automodel_triton_ce import fused as fused_mod
    from automodel_triton_ce import kernels

    stats, grad = fused_mod._backend("triton", torch.device("cpu"))
    assert stats is kernels.row_stats and grad is kernels.row_grad_
    z = torch.randn(3, 200)
    tgt = torch.tensor([0, 199, -1])
    m, s, zt, zs = kernels.row_stats(z, tgt, None)
    torch.testing.assert_close(m + s.log(), torch.logsumexp(z, -1))
    torch.testing.assert_close(zt, torch.tensor([z[0, 0], z[1, 199], 0.0]))
    torch.testing.assert_close(zs, z.sum(-1))


def test_interpreter_set_too_late_is_named():
    """TRITON_INTERPRET set after triton was imported (here: by importing triton first) is a clear error,
    not the interpreter's "Cannot call @triton.jit'd outside of the scope of a kernel" from inside a kernel."""
    import subprocess
    import sys

    script = (
        "import os, torch, triton\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from automodel_triton_ce.fused import triton_usable\n"
        "triton_usable(torch.device('cpu'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "TRITON_INTERPRET=1 was set after triton had been imported" in proc.stderr, proc.stderr[-2000:]
