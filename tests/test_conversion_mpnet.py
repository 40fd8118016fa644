"""Random-feature attention of a model with a relative position bias (MPNet): the quadratic
form with the factor P_ij = 2^s exp(b_ij - c_h) (nn.attention.PositionFactor) is the biased
kernel estimate normalised; `convert` distils an MPNet into it; the written folder loads into
exactly the student; the secure forward equals the plaintext one; a tuning job on it predicts
under MPC as in plaintext; its cost is pinned."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from secptune.conversion import ConvertSettings
from secptune.models import PlainScorer, SecureScorer, SentenceTask, Transformer, load_attention, load_model
from secptune.models.calibration import calibrate
from secptune.models.deployment import fingerprint, public_settings, settings_from_wire
from secptune.models.rfa import RFA_FILE, position_factor
from secptune.models.transformer import AttentionSettings, relative_position_buckets
from secptune.models.weights import ModelFolderError
from secptune.mpc import Config, LocalSession, wire
from secptune.nn.attention import PositionFactor, RandomFeatures, rfa_attention
from secptune.nn.functional import clamped_range
from secptune.tuning.job import TuneJob, run_job
from test_conversion import FAST, TEXTS, check_the_written_folder_is_the_student, quick_conversion

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def converted_mpnet(tiny_mpnet, tmp_path_factory):
    return quick_conversion(tiny_mpnet, tmp_path_factory.mktemp("converted-mpnet") / "rfa", 20)


def _factors(position, table, L):
    return position.table(table)[relative_position_buckets(L)].permute(2, 0, 1).unsqueeze(0)


def test_the_position_factor_settings_follow_the_table(gen):
    """c_h is each head's largest bias; the floor is the least, over heads, of the largest
    factor a real query always has (distance 0 and one neighbour); s lifts it halfway."""
    table = torch.randn(32, 4, generator=gen, dtype=torch.float64) * 2
    position = position_factor(table)
    assert torch.equal(position.shift, table.amax(0))
    b = relative_position_buckets(3)
    first = torch.maximum(table[b[0, 0]], table[b[0, 1]])          # the first token: itself and +1
    last = torch.maximum(table[b[2, 1]], table[b[2, 2]])           # the last: -1 and itself
    assert position.floor == pytest.approx(float((torch.minimum(first, last) - table.amax(0)).min()), abs=1e-12)
    assert position.scale_bits == math.ceil(-position.floor * math.log2(math.e) / 2)
    # every real query's row mass, for texts of 2 to 40 tokens, is at least 2^s e^floor
    for n in range(2, 41):
        mass = _factors(position, table, n).sum(-1)
        assert float(mass.min()) >= 2.0 ** position.scale_bits * math.exp(position.floor) * (1 - 1e-12)
    assert position_factor(torch.zeros(32, 4)).floor == 0.0 and position_factor(torch.zeros(32, 4)).scale_bits == 0
    with pytest.raises(ValueError, match="spread over more than 144"):
        position_factor(torch.cat([torch.zeros(31, 4), torch.full((1, 4), -150.0)]))


def test_rfa_with_a_position_factor_is_the_biased_kernel_estimate_normalised(gen):
    """sum_j k^_ij exp(b_ij) m_j v_j / sum_j k^_ij exp(b_ij) m_j, k^ the trigonometric estimate
    on l2-normalised queries and keys; with a zero bias it is RFA's linear form."""
    heads, L, d, M = 3, 9, 8, 16
    q, k, v = (torch.randn(2, heads, L, d, generator=gen, dtype=torch.float64) for _ in range(3))
    key_mask = torch.ones(2, 1, L, 1, dtype=torch.float64)
    key_mask[1, :, 6:] = 0
    table = torch.randn(32, heads, generator=gen, dtype=torch.float64) * 2
    position = position_factor(table)
    features = RandomFeatures.draw("normalized", heads, d, M, seed=3, temperature=torch.full((heads,), 1.5),
                                   position=position)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)                                  # noqa: E731
    proj_q, proj_k = unit(q) @ features.frequencies, unit(k) @ features.frequencies
    kernel = torch.cos(proj_q.unsqueeze(-2) - proj_k.unsqueeze(-3)).sum(-1) * key_mask.mT     # (N, h, L, L)
    bias = table[relative_position_buckets(L)].permute(2, 0, 1)                             # (h, L, L)
    kernel = kernel * torch.exp(bias - table.amax(0).view(-1, 1, 1)) * 2.0 ** position.scale_bits
    lo, hi = clamped_range(*features.normaliser_range)
    expected = (kernel @ v) / kernel.sum(-1, keepdim=True).clamp(2.0 ** lo, 2.0 ** hi)
    got = rfa_attention(q, k, v, key_mask, features, position=_factors(position, table, L))
    # float64 round-off relative to the output's scale: random queries and keys with a bias of
    # std 2 make some normalisers cancel, and outputs reach 1e5 (seed 2: 2.8e5, off by 1.3e-10)
    assert (got - expected).abs().max() <= 1e-12 * max(float(expected.abs().max()), 1.0)
    # the normaliser's range: the factor's octaves added at both ends
    plain = RandomFeatures.draw("normalized", heads, d, M, seed=3, temperature=torch.full((heads,), 1.5))
    assert features.normaliser_range[1] == pytest.approx(plain.normaliser_range[1] + position.scale_bits)
    assert features.normaliser_range[0] == pytest.approx(
        plain.normaliser_range[0] + position.floor * math.log2(math.e) + position.scale_bits)
    # a zero bias: the quadratic form is the linear one, and so is the quadratic form alone
    flat = position_factor(torch.zeros(32, heads, dtype=torch.float64))
    linear = rfa_attention(q, k, v, key_mask, plain, form="linear")
    quadratic = rfa_attention(q, k, v, key_mask, plain, position=_factors(flat, torch.zeros(32, heads), L))
    assert (linear - quadratic).abs().max() <= 1e-10
    assert (linear - rfa_attention(q, k, v, key_mask, plain, form="quadratic")).abs().max() <= 1e-10
    with pytest.raises(ValueError, match="no linear RFA form"):
        rfa_attention(q, k, v, key_mask, plain, position=_factors(flat, torch.zeros(32, heads), L), form="linear")


def test_rfa_takes_the_quadratic_form_where_it_opens_fewer_values():
    from secptune.nn.attention import quadratic_is_cheaper

    # MiniLM's heads (d = 32) at M = 128, and BERT's (d = 64) at M = 64: up to 91 tokens
    assert quadratic_is_cheaper(91, 128, 32) and not quadratic_is_cheaper(92, 128, 32)
    assert quadratic_is_cheaper(91, 64, 64) and not quadratic_is_cheaper(92, 64, 64)


def test_distilling_an_mpnet_lowers_the_loss_and_records_the_position_factor(converted_mpnet, tiny_mpnet):
    out, report = converted_mpnet
    settings = ConvertSettings(**FAST)
    plain = [loss for step, loss in enumerate(report["losses"]) if not settings.prompted(step)]
    assert sum(plain[-3:]) / 3 < 0.8 * sum(plain[:3]) / 3, plain
    meta = json.loads((out / RFA_FILE).read_text())
    config, weights = load_model(tiny_mpnet)
    expected = position_factor(weights.embeddings.relative_bias)
    assert meta["position"]["shift"] == pytest.approx(expected.shift.tolist(), abs=1e-12)
    assert meta["position"]["floor"] == pytest.approx(expected.floor, abs=1e-12)
    attention = load_attention(out, config)
    assert attention.kind == "rfa" and attention.position.floor == pytest.approx(expected.floor)
    # the servers receive the factor's settings with the rest (through the wire), and the
    # deployed model's fingerprint covers them
    header, frames = wire.encode(public_settings(config, weights, attention))
    received = settings_from_wire(wire.decode(header, frames))[2]
    assert torch.equal(received.position.shift, attention.position.shift)
    assert received.position.floor == attention.position.floor
    assert fingerprint(config, weights, received) == fingerprint(config, weights, attention)
    moved = dataclasses.replace(attention, position=dataclasses.replace(attention.position, floor=-1.0))
    assert fingerprint(config, weights, moved) != fingerprint(config, weights, attention)
    # an MPNet folder converted without the factor's settings (written before them) is refused
    broken = out.parent / "no-position"
    import shutil
    shutil.copytree(out, broken)
    (broken / RFA_FILE).write_text(json.dumps({**meta, "position": None}))
    with pytest.raises(ModelFolderError, match="without its position factor"):
        load_attention(broken, config)
    # RFA settings without the factor refuse the bias in one line, as before conversions had it
    model = Transformer(config, weights, AttentionSettings("rfa", attention.features))
    words = weights.embeddings.word[torch.tensor([[0, 5, 6, 7]])]
    with pytest.raises(ValueError, match="relative position bias .* needs its position factor"):
        model.encode(model.embed(words), torch.ones(1, 4, dtype=torch.float64))


def test_the_written_mpnet_folder_is_exactly_the_student(tiny_mpnet, tokenizer, tmp_path, gen):
    assert check_the_written_folder_is_the_student(tiny_mpnet, tokenizer, tmp_path, gen).position is not None


def test_secure_scores_on_a_converted_mpnet_equal_plaintext(converted_mpnet, tokenizer, monkeypatch):
    """Within the BERT tests' 2e-3, the reciprocal's range calibrated as the developer does;
    the factor costs the exp of the table once per model and one product per layer.

    The session's randomness is fixed.  This tiny model, converted in 20 steps with M = 16
    features, has ill-conditioned queries: in the descriptions' pass (8 tokens of 16, the
    rest padding) one query's RFA normaliser is 0.13 where the others are about 100, its
    kernel estimate nearly cancelling.  The cosine protocol's features are exact to 2^-8
    (by design, nn.attention._sincos_at_base), so across sessions that query's output moves
    by up to its own size, and the scores by up to 4.4e-3 in 1 of 64 sessions (measured
    2026-12-05: 63 of 64 within 1.7e-3, most within 8e-4).  Every protocol on the way is
    within its own bound there (the inverse roots to 6e-4 relative, sin and cos to 5e-3);
    their bounds are tested on fresh random inputs in test_protocols."""
    out, _ = converted_mpnet
    config, weights = load_model(out)
    attention = calibrate(config, weights, load_attention(out, config), tokenizer, TEXTS, 16).apply(
        load_attention(out, config))
    assert attention.position is not None
    task = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
    plain = PlainScorer(config, weights, tokenizer, task, attention, max_length=16)
    ref = plain.scores(plain.add_texts(TEXTS, 0))
    computed = []
    table = PositionFactor.table
    monkeypatch.setattr(PositionFactor, "table", lambda self, t: computed.append(t) or table(self, t))
    with LocalSession(Config(), timeout=60, seed=bytes(range(16))) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, attention, 16, "public")
        handle = scorer.add_texts(TEXTS, 0)
        got = scorer.scores(handle)
        again = scorer.scores(handle)
    assert (got - ref).abs().max() <= 2e-3, (got - ref).abs().max()
    assert (again - ref).abs().max() <= 2e-3, (again - ref).abs().max()
    # the servers keep the table's factors: one exp per server for the descriptions' pass and both passes
    assert len(computed) == 2


def test_a_converted_mpnet_tunes_under_mpc_as_in_plaintext(converted_mpnet, tmp_path):
    out, _ = converted_mpnet
    job = TuneJob(model=str(out), head="similarity", attention="rfa", shots=4, test_size=6, max_length=16,
                  prompt_length=2, dim=8, popsize=4, generations=2, batch=4, eval_every=2)
    runs = {mode: run_job(dataclasses.replace(job, mode=mode), tmp_path / mode) for mode in ("plaintext", "mpc")}
    assert runs["plaintext"]["attention"] == "rfa"
    assert runs["plaintext"]["test_predictions"] == runs["mpc"]["test_predictions"]
    # the loss is a cross entropy of 20 x the scores: the scores' MPC error (about 3e-4 on this
    # model, 2e-3 at most) moves it by up to 40 times that
    for a, b in zip(runs["plaintext"]["generations"], runs["mpc"]["generations"]):
        assert b["loss_min"] == pytest.approx(a["loss_min"], abs=2e-2)


def test_the_quadratic_form_costs_one_round_more_and_opens_the_kernel_matrix(session):
    """Against RFA's linear form on the same inputs and settings, the position factor's form
    (with a flat factor, so that both normalise over the same range) trades the (2M, d + 1)
    summary's two products and its truncation for the (L, L) kernel's product with P, its
    truncation and its product with [v m, m]: one round more, and
    3 N h L^2 + h L^2 - 2 N h 2M (d + 1) more ring elements opened (16 bytes each), pinned;
    the factor's exp of the (buckets, heads) table, once per model, is the secure exp's cost."""
    from secptune.mpc.shared import SharedTensor

    N, heads, L, d, M = 2, 3, 10, 8, 16
    features = RandomFeatures.draw("normalized", heads, d, M, seed=3, temperature=torch.full((heads,), 1.5))
    flat = position_factor(torch.zeros(32, heads, dtype=torch.float64))
    factors = _factors(flat, torch.zeros(32, heads, dtype=torch.float64), L)
    costs = {}
    for form in ("linear", "quadratic", "position"):
        def program(s, q, k, v, form=form):
            ones = torch.ones(N, 1, L, 1, dtype=torch.int64)
            key_mask = SharedTensor(ones if s.index == 0 else torch.zeros_like(ones), 0, s)
            if form != "position":
                return rfa_attention(q, k, v, key_mask, features, form=form)
            shared = SharedTensor((factors * 2 ** 16).round().long() if s.index == 0
                                  else torch.zeros(factors.shape, dtype=torch.int64), 16, s)
            return rfa_attention(q, k, v, key_mask, features, position=shared)
        q, k, v = (torch.randn(N, heads, L, d, dtype=torch.float64) for _ in range(3))
        costs[form] = session.run(program, q, k, v).cost
    lin, quad, pos = costs["linear"], costs["quadratic"], costs["position"]
    assert pos.rounds == lin.rounds + 1
    more = 3 * N * heads * L * L + heads * L * L - 2 * N * heads * 2 * M * (d + 1)
    assert pos.online_bytes - lin.online_bytes == 16 * more
    # without a factor the two forms take the same rounds and differ by 2 N h (L^2 - 2M (d + 1))
    assert quad.rounds == lin.rounds
    assert quad.online_bytes - lin.online_bytes == 16 * 2 * N * heads * (L * L - 2 * M * (d + 1))
    # the table's factor: the secure exp without the clip (inputs >= -144): the polynomial (two
    # openings) and 6 squarings, 7 rounds
    table = torch.randn(32, heads, dtype=torch.float64) * 2
    factor = position_factor(table)
    result = session.run(lambda s, t: factor.table(t), table)
    assert result.cost.rounds == 7 and result.cost.online_bytes == 16 * 32 * heads * (2 + 6)
    expected = torch.exp(table - factor.shift) * 2.0 ** factor.scale_bits
    assert (result.outputs[0] - expected).abs().max() <= 1e-4 * 2.0 ** factor.scale_bits


def test_secure_rfa_with_large_normalisers_equals_plaintext(session, gen):
    """With the factor's 2^s a normaliser reaches 2^19 and 1 / normaliser 2^-19: the final
    product keeps it at RECIPROCAL_FRAC bits (at the base 16 the outputs were off by 1e-2 on
    the converted all-mpnet-base-v2)."""
    from secptune.mpc.shared import SharedTensor

    N, heads, L, d, M = 2, 2, 32, 16, 128
    table = torch.zeros(32, heads, dtype=torch.float64)
    table[[0, 1, 17]] = -9.0                   # distances 0, -1 and +1 far below the rest: s = 7
    position = position_factor(table)
    assert position.scale_bits >= 6
    features = RandomFeatures.draw("normalized", heads, d, M, seed=1, temperature=torch.full((heads,), 0.5),
                                   position=position)
    factors = _factors(position, table, L)
    q, k, v = (torch.randn(N, heads, L, d, generator=gen, dtype=torch.float64) for _ in range(3))
    key_mask = torch.ones(N, 1, L, 1, dtype=torch.float64)
    normalisers = []
    ref = rfa_attention(q, k, v, key_mask, features, lambda what, x: normalisers.append(x) if what == "normaliser"
                        else None, position=factors)
    assert float(normalisers[0].max()) > 2.0 ** 15

    def program(s, q, k, v):
        ones = torch.ones(N, 1, L, 1, dtype=torch.int64)
        mask = SharedTensor(ones if s.index == 0 else torch.zeros_like(ones), 0, s)
        shared = SharedTensor((factors * 2 ** 20).round().long() if s.index == 0
                              else torch.zeros(factors.shape, dtype=torch.int64), 20, s)
        return rfa_attention(q, k, v, mask, features, position=shared)

    out = session.run(program, q, k, v).outputs[0]
    assert (out - ref).abs().max() <= 1e-3, (out - ref).abs().max()
