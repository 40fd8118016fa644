"""Backward passes, optimizers and the gradient baselines: the plaintext backward against torch
autograd (to float64 rounding), the secure backward against the plaintext one (bounds stated
per test, at the default 16 fractional bits, inputs taken as encoded), their costs pinned,
and training under MPC following plaintext on a real task."""

from __future__ import annotations

import json

import pytest
import torch

from secptune.baselines.compare import METHODS
from secptune.baselines.gradient import GradientModel, Inputs, TrainingWeights, _locate, named_parameters
from secptune.baselines.optim import SGD, Adam, make_optimizer
from secptune.baselines.training import TrainBatch, Trainer, TrainJob, _fresh_weights, run_train_job
from secptune.cli import main
from secptune.models import load_model
from secptune.models.heads import MaskedLMHead
from secptune.models.scoring import forward_scores
from secptune.models.transformer import Transformer, relative_position_buckets
from secptune.models.weights import developer_share, shapes_only, share_weights
from secptune.mpc import LocalSession
from secptune.mpc.protocols.inverse import coarse_octaves
from secptune.mpc.comm import OWNER
from secptune.mpc.protocols.arithmetic import prepare
from secptune.nn import backward as B
from secptune.nn import functional as F

from conftest import randn, uniform

OPEN = 16


def q(x: torch.Tensor, frac: int = 16) -> torch.Tensor:
    return torch.round(x.double() * 2.0 ** frac) / 2.0 ** frac


def rel(a, b) -> float:
    """max |a - b| relative to max |b|."""
    return float((a - b).abs().max() / b.abs().max())


# --- the plaintext backward is the exact derivative ----------------------------------------

def _autograd(f, *xs):
    leaves = [x.clone().requires_grad_(True) for x in xs]
    out = f(*leaves)
    d_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * d_out).sum().backward()
    return out.detach(), d_out, [leaf.grad for leaf in leaves]


def test_plaintext_backward_of_each_layer_is_torch_autograd(gen):
    x, w, b = randn(gen, 2, 5, 12), randn(gen, 12, 8, scale=0.3), randn(gen, 8)
    _, dy, (dx, dw, db) = _autograd(lambda x, w, b: x @ w + b, x, w, b)
    ours = B.linear_backward(x, w.T, dy)
    for got, want in zip(ours, (dx, dw, db)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    g, beta = 1 + randn(gen, 12, scale=0.2), randn(gen, 12)
    y, dy, (dx, dg, db) = _autograd(lambda x, g, b: torch.nn.functional.layer_norm(x, (12,), g, b, 1e-5), x, g, beta)
    y_ours, saved = B.layer_norm_forward(x, g, beta, 1e-5)
    torch.testing.assert_close(y_ours, y, rtol=1e-12, atol=1e-12)
    for got, want in zip(B.layer_norm_backward(saved, g, dy), (dx, dg, db)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    _, dy, (dx,) = _autograd(torch.nn.functional.gelu, x * 3)
    torch.testing.assert_close(B.gelu_backward(x * 3, dy), dx, rtol=1e-12, atol=1e-12)

    qkv = [randn(gen, 2, 3, 6, 4) for _ in range(3)]
    mask = torch.ones(2, 1, 6, 1, dtype=torch.float64)
    mask[1, 0, -2:] = 0
    out, dy, grads = _autograd(lambda q, k, v: B.attention_forward(q, k, v, mask)[0], *qkv)
    ref = torch.softmax(qkv[0] @ qkv[1].mT + (mask.mT - 1) * 1e4, -1) @ qkv[2]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    p = B.attention_forward(*qkv, mask)[1]
    for got, want in zip(B.attention_backward(*qkv, p, dy), grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # an additive bias on the scores (MPNet's): its gradient is ds
    bias = randn(gen, 1, 3, 6, 6)
    _, dy, (*_, d_bias) = _autograd(lambda q, k, v, b: B.attention_forward(q, k, v, mask, b)[0], *qkv, bias)
    p = B.attention_forward(*qkv, mask, bias)[1]
    torch.testing.assert_close(B.attention_backward(*qkv, p, dy)[3].sum(0, keepdim=True), d_bias,
                               rtol=1e-10, atol=1e-12)

    logits, labels = randn(gen, 5, 3, scale=2), torch.tensor([0, 2, 1, 1, 0])
    leaf = logits.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(leaf, labels).backward()
    one_hot = torch.nn.functional.one_hot(labels, 3).double()
    torch.testing.assert_close(B.cross_entropy_backward(logits, one_hot), leaf.grad, rtol=1e-12, atol=1e-12)


# --- the secure backward of each layer against float64 -------------------------------------

def test_secure_linear_backward_is_exact_up_to_encoding(session, gen):
    x, w, dy = randn(gen, 2, 5, 12), randn(gen, 12, 8, scale=0.3), randn(gen, 2, 5, 8, scale=0.1)

    def program(s, x, w, dy):
        dx_prepared = B.linear_backward(x, prepare(w.mT.contiguous()), dy, weight_grad=False)[0]
        return [dx_prepared, *B.linear_backward(x, w.mT, dy)]

    dx_prepared, dx, dw, db = session.run(program, x, w, dy).outputs
    want = B.linear_backward(q(x), q(w).T, q(dy))
    # products at pending precision: no truncation before the reveal
    for got in (dx_prepared, dx):
        assert (got - want[0]).abs().max() < 1e-9
    assert (dw - want[1]).abs().max() < 1e-9 and (db - want[2]).abs().max() < 1e-12


def test_secure_linear_backward_costs(session):
    def program(s, x, w, dy):
        wt = prepare(w.mT.contiguous())
        with s.cost() as only_dx:
            dx = B.linear_backward(x, wt, dy, weight_grad=False)[0]
        with s.cost() as fresh:
            out = B.linear_backward(x, w.mT, dy)
        s.store["pinned"] = (only_dx.result, fresh.result)
        return [dx, *out]

    session.run(program, torch.ones(10, 12), torch.ones(12, 8), torch.ones(10, 8))
    only_dx, fresh = session.servers[0].store["pinned"]
    # a prepared W^T: only dy is opened
    assert (only_dx.rounds, only_dx.online_bytes) == (1, OPEN * 80)
    # fresh triples: dy and W for dx, x and dy for dW (two rounds)
    assert (fresh.rounds, fresh.online_bytes) == (2, OPEN * (80 + 96 + 120 + 80))


@pytest.mark.parametrize("weight", ["shared", "prepared"])
def test_secure_layer_norm_forward_and_backward(session, gen, weight):
    x, g, b = randn(gen, 3, 6, 16, scale=2), 1 + randn(gen, 16, scale=0.2), randn(gen, 16, scale=0.1)
    dy = randn(gen, 3, 6, 16, scale=0.1)

    def program(s, x, g, b, dy):
        gw = prepare(g) if weight == "prepared" else g
        y, saved = B.layer_norm_forward(x, gw, b, 1e-5)
        with s.cost() as trace:
            grads = B.layer_norm_backward(saved, gw, dy)
        s.store["cost"] = trace.result
        return [y, *grads]

    y, dx, dg, db = session.run(program, x, g, b, dy).outputs
    y_ref, saved = B.layer_norm_forward(q(x), q(g), q(b), 1e-5)
    dx_ref, dg_ref, db_ref = B.layer_norm_backward(saved, q(g), q(dy))
    # 1 / sigma to 1e-5 relative, xh and y to a few units of 2^-16; the gradients' error is
    # a few units of 2^-16 relative to their magnitude
    assert (y - y_ref).abs().max() < 2e-4
    assert rel(dx, dx_ref) < 2e-3 and rel(dg, dg_ref) < 2e-3 and rel(db, db_ref) < 1e-9
    cost = session.servers[0].store["cost"]
    # dy g with dy xh (dg); sum(dxh xh) per row; both row sums settled; xh times a row value;
    # times 1 / sigma: one round each
    assert cost.rounds == 5
    n, rows = 3 * 6 * 16, 3 * 6
    weight_open = 0 if weight == "prepared" else 16
    assert cost.online_bytes == OPEN * (n + weight_open + 2 * n) + OPEN * 2 * n + OPEN * 2 * rows \
        + OPEN * (n + rows) * 2


def test_secure_gelu_backward_uses_the_derivative_series(session, gen):
    x = torch.cat([uniform(gen, 400, low=-6, high=6), uniform(gen, 100, low=-30, high=30)])
    dy = randn(gen, 500)
    result = session.run(lambda s, x, dy: B.gelu_backward(x, dy), x, dy)
    (dx,) = result.outputs
    want = B.gelu_backward(q(x), q(dy))
    # GeLU' from the series to 1e-5 (|x| <= 34), then the products' rounding
    assert (dx - want).abs().max() < 2e-4
    # Pi_cosine (two series from two openings of an angle's top half, 4 bytes each way),
    # x E'(x), dy GeLU'(x)
    assert result.cost.rounds == 3
    assert result.cost.online_bytes == 2 * (2 * 4) * 500 + OPEN * 500 * 4


def test_secure_attention_forward_and_backward(session, gen):
    q_, k_, v_ = randn(gen, 2, 3, 8, 4), randn(gen, 2, 3, 8, 4), randn(gen, 2, 3, 8, 4)
    d_out = randn(gen, 2, 3, 8, 4, scale=0.1)
    mask = torch.ones(2, 1, 8, 1)
    mask[1, 0, -3:] = 0

    def program(s, q, k, v, m, d):
        out, p = B.attention_forward(q, k, v, m.reinterpret(0))
        return [out, p, *B.attention_backward(q, k, v, p, d)[:3]]

    out, p, dq, dk, dv = session.run(program, q_, k_, v_, mask * 2.0 ** -16, d_out).outputs
    ref_out, ref_p = B.attention_forward(q(q_), q(k_), q(v_), mask.double())
    refs = B.attention_backward(q(q_), q(k_), q(v_), ref_p, q(d_out))
    # softmax to about 1e-4, then products; padded keys get exactly zero weight
    assert (p - ref_p).abs().max() < 3e-4 and (out - ref_out).abs().max() < 1e-3
    assert p[1, :, :, -3:].abs().max() == 0
    for got, want in zip((dq, dk, dv), refs):
        assert rel(got, want) < 5e-3


def test_secure_softmax_and_cross_entropy_backward(session, gen):
    logits, labels = randn(gen, 6, 3, scale=2), torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0, 2]), 3)
    (dz,) = session.run(lambda s, z, y: B.cross_entropy_backward(z, y.reinterpret(0)),
                        logits, labels.double() * 2.0 ** -16).outputs
    assert (dz - B.cross_entropy_backward(q(logits), labels.double())).abs().max() < 1e-4
    p, dp = torch.softmax(randn(gen, 4, 10), -1), randn(gen, 4, 10)
    result = session.run(lambda s, p, dp: B.softmax_backward(p, dp), p, dp)
    assert (result.outputs[0] - B.softmax_backward(q(p), q(dp))).abs().max() < 1e-4
    assert (result.cost.rounds, result.cost.online_bytes) == (2, OPEN * 40 * 4)


# --- the whole model ------------------------------------------------------------------------

def _tiny(tiny_bert):
    return load_model(tiny_bert)


def _batch(gen, config, Bn=3, L=7, n=2):
    ids = torch.randint(0, config.vocab_size, (Bn, L), generator=gen)
    one_hot = torch.nn.functional.one_hot(ids.reshape(-1), config.vocab_size).double()
    mask = torch.ones(Bn, n + L, dtype=torch.float64)
    mask[0, -2:] = 0
    select = torch.zeros(Bn, n + L, dtype=torch.float64)
    select[torch.arange(Bn), torch.arange(Bn) + 3] = 1
    labels = torch.nn.functional.one_hot(torch.arange(Bn) % 2, 2).double()
    return ids, one_hot, mask, select, labels


VERBALIZERS = [1037, 2204]


@pytest.mark.parametrize("folder", ["tiny_bert", "tiny_mpnet"])
def test_model_gradients_match_autograd_for_every_weight_and_the_prompt(folder, request, gen):
    """Every weight's gradient, MPNet's position bias table among them, and the prompt's."""
    config, weights = _tiny(request.getfixturevalue(folder))
    ids, one_hot, mask, select, labels = _batch(gen, config)
    leaves = {k: v.clone().requires_grad_(True) for k, v in named_parameters(weights).items()}
    trained = weights.map(lambda name, t: t)
    for name, leaf in leaves.items():
        record, attr = _locate(trained, name)
        setattr(record, attr, leaf)
    prompt = randn(gen, 2, config.hidden_size, scale=0.1).requires_grad_(True)
    tw, model = TrainingWeights.plaintext(trained, VERBALIZERS), GradientModel(config)
    inputs = Inputs(mask, select, labels, one_hot=one_hot)
    logits, tape = model.forward(tw, inputs, prompt)
    # the same model as the inference forward (Transformer + masked-LM head)
    plain = Transformer(config, weights)
    ref = forward_scores(plain, MaskedLMHead(plain, VERBALIZERS), weights.embeddings.word[ids],
                         prompt.detach().unsqueeze(0), mask, select)[0]
    torch.testing.assert_close(logits.detach(), ref, rtol=1e-12, atol=1e-12)
    torch.nn.functional.cross_entropy(logits, labels.argmax(1)).backward()
    with torch.no_grad():
        grads, d_prompt = model.backward(tw, inputs, tape, B.cross_entropy_backward(logits.detach(), labels), True)
    assert set(grads) == set(leaves)
    assert ("embeddings.relative_bias" in grads) == (folder == "tiny_mpnet")
    for name, leaf in leaves.items():
        assert rel(grads[name], leaf.grad) < 1e-10, name
    assert rel(d_prompt, prompt.grad) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["tiny_bert", "tiny_mpnet"])
def test_secure_model_gradients_follow_plaintext(folder, request, session, gen):
    """Full fine-tuning's gradients (fresh shares; MPNet's position bias table among them) and
    the prompt's (prepared weights)."""
    config, weights = _tiny(request.getfixturevalue(folder))
    ids, one_hot, mask, select, labels = _batch(gen, config)
    prompt = randn(gen, 2, config.hidden_size, scale=0.1)
    model = GradientModel(config)
    tw = TrainingWeights.plaintext(weights, VERBALIZERS)
    inputs = Inputs(mask, select, labels, one_hot=one_hot)
    logits, tape = model.forward(tw, inputs, prompt)
    scale = 2.0 ** 10
    grads, d_prompt = model.backward(tw, inputs, tape, B.cross_entropy_backward(logits, labels, scale), True)
    names = sorted(grads)
    shapes = shapes_only(weights)

    def work(server):
        sft = TrainingWeights.fresh(_fresh_weights(server, shapes), VERBALIZERS)
        frozen = TrainingWeights.prepared(share_weights(server, shapes), VERBALIZERS)
        sp = server.input_from_owner(tuple(prompt.shape))
        m, sel, lab, oh = (server.input_from_owner(tuple(t.shape), frac=0) for t in (mask, select, labels, one_hot))
        x = Inputs(m, sel, lab, one_hot=oh)
        z, t = model.forward(sft, x, sp)
        g, _ = model.backward(sft, x, t, B.cross_entropy_backward(F.settle(z), x.labels, scale), True)
        z2, t2 = model.forward(frozen, x, sp)
        _, dp = model.backward(frozen, x, t2, B.cross_entropy_backward(F.settle(z2), x.labels, scale), False)
        server.reveal_to(OWNER, [F.settle(z), F.settle(dp)] + [F.settle(g[n]) for n in names])

    def owner():
        developer_share(session.developer, weights)
        developer_share(session.developer, weights)
        session.owner.share(prompt)
        for t in (mask, select, labels, one_hot):
            session.owner.share(t, frac=0)
        return session.owner.receive()

    z, dp, *g = session.on_servers(work, owner)
    assert (z - logits).abs().max() < 2e-3
    # with the loss scaled by 2^10, every gradient to 1% of its largest entry (measured: 1e-4
    # to 1e-3 for the weights, 3e-3 for the prompt)
    assert rel(dp, d_prompt) < 1e-2
    for name, got in zip(names, g):
        assert rel(got, grads[name]) < 1e-2, name


@pytest.mark.parametrize("method", ["sft", "prompt"])
def test_trainer_logits_are_the_forward_of_a_step_in_plaintext_and_under_mpc(tiny_bert, gen, method):
    """`Trainer.logits` (dev accuracy) scores a batch without a step: in plaintext, the logits
    the next step's forward computes; under MPC, the same to 2e-3, and the weights unchanged."""
    config, weights = _tiny(tiny_bert)
    ids = torch.randint(0, config.vocab_size, (3, 6), generator=gen)
    batch = TrainBatch(ids, torch.ones(3, 6), torch.tensor([2, 3, 4]), torch.tensor([0, 1, 1]))
    prompt = randn(gen, 2, config.hidden_size, scale=0.1) if method == "prompt" else None
    plain = Trainer(config, weights, VERBALIZERS, method, "sgd", 0.1, prompt=prompt)
    before = plain.logits(batch)
    torch.testing.assert_close(plain.step(batch).logits, before, rtol=0, atol=0)
    with LocalSession(timeout=120) as session:
        secure = Trainer(config, weights, VERBALIZERS, method, "sgd", 0.1, prompt=prompt, session=session)
        first = secure.logits(batch)
        assert (first - before).abs().max() < 2e-3
        assert (secure.logits(batch) - first).abs().max() < 2e-3       # no step was taken
        after = secure.step(batch)
        assert (after.logits - before).abs().max() < 2e-3
        assert (secure.logits(batch) - plain.logits(batch)).abs().max() < 2e-3


# --- optimizers -----------------------------------------------------------------------------

def test_plaintext_optimizers_are_torch_sgd_and_adam(gen):
    w, grads = randn(gen, 5, 4), [randn(gen, 5, 4) for _ in range(3)]
    # |g| >= 0.1: torch's eps = 0 below differs from ours by eps^2 / v relative, which a
    # gradient near zero (a random input now and then) would lift above the 1e-9 bound
    grads = [g.sign() * (g.abs() + 0.1) for g in grads]
    for ours, theirs in ((SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
                         # eps inside the square root; torch's eps = 0 differs by eps^2 / v
                         (Adam(0.01, eps=1e-6), lambda p: torch.optim.Adam(p, lr=0.01, eps=0.0))):
        leaf = w.clone().requires_grad_(True)
        opt, params = theirs([leaf]), {"w": w.clone()}
        for g in grads:
            leaf.grad = g.clone()
            opt.step()
            params = ours.step(params, {"w": g})
        torch.testing.assert_close(params["w"], leaf.detach(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_secure_optimizer_steps_follow_plaintext(session, gen, name):
    w, b = randn(gen, 6, 5, scale=0.1), randn(gen, 5, scale=0.1)
    def away_from_zero(*shape):               # |g| >= 0.01: 655 units of 2^-16 or more
        g = randn(gen, *shape, scale=0.05)
        return g.sign() * (g.abs() + 0.01)

    grads = [(away_from_zero(6, 5), away_from_zero(5)) for _ in range(3)]
    plain, params = make_optimizer(name, 0.01), {"w": w, "b": b}
    for gw, gb in grads:
        params = plain.step(params, {"w": gw, "b": gb})

    def program(s, w, b, *g):
        opt, p = make_optimizer(name, 0.01), {"w": w, "b": b}
        for i in range(3):
            with s.cost() as trace:
                p = opt.step(p, {"w": g[2 * i], "b": g[2 * i + 1]})
            s.store["step"] = trace.result
        return [p["w"], p["b"]]

    flat = [t for pair in grads for t in pair]
    out_w, out_b = session.run(program, w, b, *flat).outputs
    # SGD: each step's rounding is a unit of 2^-16; Adam: each step moves by about lr
    # whatever |g|, and follows plaintext to 1% of lr (g quantised to 2^-16 relative 1e-3,
    # m and v at 32 bits, the inverse square root to 1e-5)
    bound = 3 * 3 * 2.0 ** -16 if name == "sgd" else 3 * 0.01 * 0.01
    assert (out_w - params["w"]).abs().max() < bound
    assert (out_b - params["b"]).abs().max() < bound
    step = session.servers[0].store["step"]
    n = 35
    if name == "sgd":
        # gradients already at 16 bits: one round truncates the updates
        assert (step.rounds, step.online_bytes) == (1, OPEN * n)
    else:
        # every g^2; m and v truncated to 32 bits; the inverse square root of v_hat (8 rounds
        # over every parameter at once: its range is bracketed in two stages); m times it;
        # the updates truncated
        assert step.rounds == 1 + 1 + 8 + 1 + 1
        # the inverse square root over [eps^2 (1 - b2), 2^4] = [2^-30, 2^4]: J = 34 octaves in
        # c = 5 coarse intervals of w = 7: c + 1 comparisons (the ends too: inputs outside are
        # clamped), 2 c openings to normalise, w - 1 comparisons, 2 w openings to normalise
        # with c + w for the joint selector, 7 for the polynomial's powers, 2 c w to rescale
        J, w, c = 34, 7, 5
        assert coarse_octaves(J) == w
        rsqrt_openings = (c + 1) + 2 * c + (w - 1) + 2 * w + (c + w) + 7 + 2 * c * w
        assert step.online_bytes == OPEN * n * (1 + 2 + rsqrt_openings + 2 + 1)


def test_secure_adam_takes_steps_of_lr_for_loss_scaled_gradients_up_to_2_to_the_11(session):
    """Gradients carrying the loss scale 2^10, from 2^-10 to 2^11 of it (1e-6 to 2 unscaled),
    two steps: each moves by lr, as in plaintext (a scaled gradient above 2^8 used to
    overflow (1 - b2) g^2 and step hundreds of times too far)."""
    scale = 2.0 ** 10
    g = scale * torch.tensor([s * 2.0 ** e for e in (-20, -16, -12, -8, -6, -4, -2, 0, 1) for s in (1, -1)],
                             dtype=torch.float64)
    w = torch.zeros_like(g)
    plain, params = Adam(0.01, grad_scale=scale), {"w": w}
    for _ in range(2):
        params = plain.step(params, {"w": g})

    def program(s, w, g):
        opt, p = Adam(0.01, grad_scale=scale), {"w": w}
        for _ in range(2):
            p = opt.step(p, {"w": g})
        return [p["w"]]

    (out,) = session.run(program, w, g).outputs
    assert (out - params["w"]).abs().max() < 2 * 0.01 * 0.01
    assert (params["w"][g.abs() >= scale * 2.0 ** -6].abs() > 0.019).all()


# --- training under MPC follows plaintext on a real task -----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method, optimizer, lr", [("sft", "sgd", 1e-3), ("prompt", "adam", 1e-2)])
def test_training_loss_falls_under_mpc_as_in_plaintext(tmp_path, method, optimizer, lr):
    """MiniLM's first layer (real weights, an identity masked-LM head tied to its word table)
    on real movie-review sentences: full-batch steps on the 4 training texts, learning rate
    chosen in plaintext and reused under MPC."""
    job = TrainJob(method=method, optimizer=optimizer, lr=lr, steps=2, batch=4, shots=2, max_length=12,
                   layers=1, prompt_length=4, eval_every=2)
    plain = run_train_job(TrainJob(**{**job.__dict__, "mode": "plaintext"}), tmp_path / "plain")
    secure = run_train_job(job, tmp_path / "mpc")
    p = [s["loss"] for s in plain["steps"]]
    m = [s["loss"] for s in secure["steps"]]
    assert p[-1] < p[0] - 0.05 and m[-1] < m[0] - 0.05
    # the same losses to 1e-3 (fixed point at 2^-16, gradients scaled by 2^10)
    assert max(abs(a - b) for a, b in zip(p, m)) < 1e-3
    # the 4 dev texts, scored before the first step and after the last, the same under MPC
    assert [d["step"] for d in plain["dev"]] == [d["step"] for d in secure["dev"]] == [0, 2]
    assert [d["accuracy"] for d in plain["dev"]] == [d["accuracy"] for d in secure["dev"]]
    assert secure["steps"][1]["dev_accuracy"] == secure["dev"][1]["accuracy"]
    assert (tmp_path / "mpc" / "loss.png").exists()
    saved = json.loads((tmp_path / "mpc" / "results.json").read_text())
    assert saved["steps"][0]["costs"]["backward"]["rounds"] > 0


def test_sft_trains_mpnets_position_bias_under_mpc_as_in_plaintext(tiny_mpnet, tmp_path, capsys):
    """`secptune train` on an MPNet folder: full fine-tuning moves its relative position bias
    table with the other weights, and the losses under MPC are plaintext's to 1e-3, both
    with the developer's GeLU bounds."""
    config, weights = load_model(tiny_mpnet)
    ids = torch.randint(0, config.vocab_size, (4, 10), generator=torch.Generator().manual_seed(3))
    batch = TrainBatch(ids, torch.ones(4, 10), torch.tensor([2, 3, 4, 5]), torch.tensor([0, 1, 1, 0]))
    plain = Trainer(config, weights, VERBALIZERS, "sft", "sgd", 0.5)
    plain.step(batch)
    moved = (plain.params["embeddings.relative_bias"] - weights.embeddings.relative_bias).abs().amax(1)
    used = torch.zeros(len(moved), dtype=torch.bool)
    used[relative_position_buckets(10).unique()] = True
    # the distances of 10 tokens reach some buckets: those rows move, the others stay
    assert moved[used].min() > 0 and moved[~used].max() == 0
    assert "embeddings.token_type" not in plain.params          # MPNet has none: its zero row stays
    losses = {}
    for mode in ("plaintext", "mpc"):
        assert main(["train", "--model", str(tiny_mpnet), "--mode", mode, "--steps", "2", "--batch", "4",
                     "--shots", "2", "--max-length", "10", "--lr", "0.05", "--out", str(tmp_path / mode)]) == 0
        saved = json.loads((tmp_path / mode / "results.json").read_text())
        losses[mode] = [r["loss"] for r in saved["steps"]]
        # the developer's GeLU bound per layer, calibrated on its own texts (MPNet's reach 181)
        assert set(saved["gelu_bounds_log2"]) == {"0.gelu", "1.gelu"}
    assert "training loss" in capsys.readouterr().out
    assert max(abs(a - b) for a, b in zip(losses["plaintext"], losses["mpc"])) < 1e-3


# --- the commands ---------------------------------------------------------------------------

@pytest.mark.slow
def test_compare_command_on_a_tiny_shape(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--shape", "tiny", "--layers", "0", "1", "2", "--seq-len", "8", "--prompt-length", "2",
                 "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert (out / "compare.png").stat().st_size > 0
    measured = [r for r in result["rows"] if r["measured"]]
    assert {(r["method"], r["layers"]) for r in measured} == {
        (m, n) for m in ("sft", "prompt-grad", "forward-softmax", "forward-rfa") for n in (0, 1, 2)}
    for r in measured:
        assert r["total_s"] == pytest.approx(r["forward_s"] + r["backward_s"] + r["update_s"])
        assert r["online_gb"] > 0 and r["rounds"] > 0
        if r["method"].startswith("forward"):
            assert r["backward_s"] == 0 and r["update_s"] == 0
    # the tiny shape is 2 layers deep: nothing to extrapolate; ratios are against RFA
    assert all(r["measured"] for r in result["rows"])
    assert result["ratios"]["2 layers, vocabulary 1000"]["forward-rfa"]["online_bytes"] == 1.0
    sft = next(r for r in measured if r["method"] == "sft" and r["layers"] == 2)
    rfa = next(r for r in measured if r["method"] == "forward-rfa" and r["layers"] == 2)
    assert sft["online_gb"] > rfa["online_gb"] and sft["rounds"] > rfa["rounds"]
    # per-layer online bytes and rounds are the same from 0 to 1 as from 1 to 2 layers
    for method in ("sft", "prompt-grad", "forward-rfa"):
        b = {r["layers"]: r for r in measured if r["method"] == method}
        assert b[2]["online_bytes"] - b[1]["online_bytes"] == pytest.approx(b[1]["online_bytes"] - b[0]["online_bytes"],
                                                                            rel=0.02)
    table = capsys.readouterr().out
    assert "full fine-tuning (SFT)" in table and "forward-only + RFA" in table


def test_compare_command_on_an_mpnet_folder(tiny_mpnet, tmp_path):
    """Every method on MPNet: SFT trains its position bias table, RFA runs its quadratic form
    with the bias's factor; each layer costs the same from 0 to 1 layers as from 1 to 2."""
    out = tmp_path / "cmp"
    assert main(["compare", "--model", str(tiny_mpnet), "--layers", "0", "1", "2", "--seq-len", "8",
                 "--prompt-length", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert {(r["method"], r["layers"]) for r in rows} == {(m, n) for m in METHODS for n in (0, 1, 2)}
    for method in METHODS:
        b = {r["layers"]: r for r in rows if r["method"] == method}
        assert b[1]["rounds"] > b[0]["rounds"] and b[2]["online_bytes"] > b[1]["online_bytes"]
        assert b[2]["online_bytes"] - b[1]["online_bytes"] == pytest.approx(b[1]["online_bytes"] - b[0]["online_bytes"],
                                                                            rel=0.02)


def test_compare_and_train_commands_report_bad_input_in_one_line(capsys):
    assert main(["compare", "--shape", "gpt-9"]) == 2
    assert "unknown shape" in capsys.readouterr().err
    assert main(["compare", "--shape", "tiny", "--seq-len", "4", "--prompt-length", "4"]) == 2
    assert main(["train", "--model", "/no/such/folder"]) == 2
    assert "no such folder" in capsys.readouterr().err
