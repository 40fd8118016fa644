"""What makes tuning leave the owner with a better model, and the evidence that it did: a
search that starts at the zero-shot model, deep prompts, class prototypes in the similarity
head, a second optimiser, checkpoints that execute nothing, and paired statistics."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

from secptune.models import PlainScorer, SecureScorer, load_model
from secptune.models.scoring import SentenceTask, prototype_mixing
from secptune.mpc import Config, LocalSession
from secptune.tuning.job import TuneJob, choose_weight, run_job
from secptune.tuning.loop import Tuner, TuningConfig, load_checkpoint
from secptune.tuning.optimizers import CMASearch, ReplayMismatch, SPSASearch, replay
from secptune.tuning.prompt import PromptSpace
from secptune.tuning.stats import (compare_predictions, gain_p, mcnemar_exact, mcnemar_one_sided, summary_line,
                                   wilson_interval)

SENTENCES = ["a total waste of time", "gorgeous and witty", "dull, dull, dull", "I loved every minute",
             "not worth the ticket", "a triumph"]
LABELS = torch.tensor([0, 1, 0, 1, 0, 1])
TASK = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
SMALL = dict(attention="softmax", shots=4, test_size=6, max_length=16, prompt_length=2, dim=8, popsize=4,
             generations=4, batch=4, eval_every=2)


def _space(config, depth=1, dim=8, n=3):
    # prompts the size of the hidden states, so that they move a random model
    return PromptSpace(dim, n, config.hidden_size, 1.0, 0.5, seed=1, depth=depth, deep_scales=(1.0,) * (depth - 1))


@pytest.mark.parametrize("depth", [1, 2])
def test_the_start_scores_exactly_as_the_model_without_a_prompt(tiny_bert, tokenizer, depth):
    """z = 0 at any depth, with added prompts: the same scores as no prompt in plaintext (to
    float64 round-off) and the same predictions under MPC."""
    config, weights = load_model(tiny_bert)
    space = _space(config, depth)
    zero = space.prompts(np.zeros((1, space.latent_size)))
    plain = PlainScorer(config, weights, tokenizer, TASK, max_length=16)
    none = plain.scores(plain.add_texts(SENTENCES, 0))
    started = plain.scores(plain.add_texts(SENTENCES, 3, "add"), zero)
    assert torch.allclose(started, none, rtol=0, atol=1e-12)
    with LocalSession(Config(), timeout=60) as session:
        secure = SecureScorer(session, config, weights, tokenizer, TASK, max_length=16, embedding="public")
        mpc_none = secure.scores(secure.add_texts(SENTENCES, 0))
        mpc_start = secure.scores(secure.add_texts(SENTENCES, 3, "add"), zero)
    assert torch.equal(mpc_start.argmax(-1), none.argmax(-1)) and torch.equal(mpc_none.argmax(-1), none.argmax(-1))
    assert (mpc_start - none).abs().max() < 2e-3


def test_a_deep_prompt_adds_each_block_to_its_layers_input(tiny_bert, tokenizer, gen):
    """Block 0 is the word-level prompt; block k is added to layer k's input at positions
    1 .. n (checked by running the layers by hand); the secure pass follows the plaintext one."""
    from secptune.models.scoring import forward_hidden
    from secptune.models.transformer import Transformer

    config, weights = load_model(tiny_bert)
    plain = PlainScorer(config, weights, tokenizer, TASK, max_length=16)
    words, key_mask, pool, n, placement = texts = plain.add_texts(SENTENCES, 3, "add")
    deep = torch.randn(2, 2, 3, config.hidden_size, generator=gen, dtype=torch.float64)
    model = Transformer(config, weights)
    got = forward_hidden(model, words, deep, key_mask, "add")
    x = words.unsqueeze(0).repeat(2, 1, 1, 1)
    x[:, :, 1:4] += deep[:, 0].unsqueeze(1)
    x = model.embed(x.reshape(-1, 16, config.hidden_size))
    mask = key_mask.repeat(2, 1).reshape(-1, 1, 16, 1)
    for i, w in enumerate(weights.layers):
        if i == 1:
            x = x.reshape(2, len(SENTENCES), 16, -1).clone()
            x[:, :, 1:4] += deep[:, 1].unsqueeze(1)
            x = x.reshape(-1, 16, config.hidden_size)
        x = model.layer(i, x, w, mask)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-12)
    only_input = deep.clone()
    only_input[:, 1] = 0
    torch.testing.assert_close(plain.scores(texts, only_input), plain.scores(texts, deep[:, 0]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="blocks for a model of"):
        forward_hidden(model, words, torch.zeros(1, config.num_layers + 1, 3, config.hidden_size,
                                                 dtype=torch.float64), key_mask, "add")
    ref = plain.scores(texts, deep)
    with LocalSession(Config(), timeout=60) as session:
        secure = SecureScorer(session, config, weights, tokenizer, TASK, max_length=16, embedding="public")
        out = secure.scores(secure.add_texts(SENTENCES, 3, "add"), deep)
    assert (out - ref).abs().max() < 2e-3


def test_class_prototypes_mix_the_owners_texts_into_the_descriptions(tiny_bert, tokenizer):
    """normalise(w * mean of class c's text embeddings + (1 - w) * description_c), in plaintext
    by hand, and under MPC from shares (the owner shares only the mixing matrix); weight 0
    gives the descriptions back; the unprompted pass scores both class sets at once."""
    config, weights = load_model(tiny_bert)
    plain = PlainScorer(config, weights, tokenizer, TASK, max_length=16)
    texts = plain.add_texts(SENTENCES, 3, "add")                # the same tensors as without a prompt
    e = plain.embeddings(texts)
    d = plain.head.descriptions
    plain.set_prototypes([texts], LABELS, {"prototypes": 0.4})
    by_hand = torch.stack([0.4 * e[LABELS == c].mean(0) + 0.6 * d[c] for c in (0, 1)])
    by_hand = by_hand / by_hand.norm(dim=1, keepdim=True)
    torch.testing.assert_close(plain.head.labels.T, by_hand, rtol=0, atol=1e-12)
    both = plain.scores(plain.add_texts(SENTENCES, 0), None, ["descriptions", "prototypes"])[0]
    torch.testing.assert_close(both[:, 2:], e @ by_hand.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(both[:, :2], e @ d.T, rtol=0, atol=1e-12)
    mixing = prototype_mixing(LABELS, 2, 0.0)
    assert torch.equal(mixing, torch.cat([torch.zeros(2, 6, dtype=torch.float64), torch.eye(2, dtype=torch.float64)], 1))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        prototype_mixing(LABELS, 2, 1.5)
    with LocalSession(Config(), timeout=60) as session:
        secure = SecureScorer(session, config, weights, tokenizer, TASK, max_length=16, embedding="public")
        handle = secure.add_texts(SENTENCES, 3, "add")
        secure.set_prototypes([handle], LABELS, {"other": 0.0, "mixed": 0.4})
        secure.choose_labels("mixed")
        mpc = secure.scores(secure.add_texts(SENTENCES, 0), None, ["descriptions", "prototypes"])[0]
        a_pass = secure.last_cost
        # the kept embeddings scored against named class sets: a product per set, not a pass
        kept = secure.prototype_scores([handle], ["descriptions", "mixed"])
        assert secure.last_cost.rounds <= 5 < a_pass.rounds / 4 and secure.last_cost.comparisons == 0
        with pytest.raises(ValueError, match="inserted prompt tokens"):
            secure.set_prototypes([secure.add_texts(SENTENCES, 3, "insert")], LABELS, {"prototypes": 0.4})
    assert (mpc - both).abs().max() < 2e-3
    torch.testing.assert_close(plain.prototype_scores([texts], ["descriptions", "prototypes"]), both,
                               rtol=0, atol=1e-12)
    assert (kept - both).abs().max() < 2e-3


def test_the_prototype_weight_is_chosen_by_cross_fitting_and_the_test_head_uses_every_shot(tiny_bert, tokenizer):
    """Each weight's prototypes of the training texts score the dev texts and those of the dev
    texts score the training texts (by hand here); the kept weight follows `choose_weight`;
    the search's head is the training texts' prototypes at that weight, the test's those of
    the training and dev texts together."""
    from types import SimpleNamespace

    from secptune.tuning.job import FINAL_PROTOTYPES, PROTOTYPE_WEIGHTS, _set_prototypes

    config, weights = load_model(tiny_bert)
    plain = PlainScorer(config, weights, tokenizer, TASK, max_length=16)
    dev_texts = ["flat and lifeless", "a joy from start to finish", "tedious", "warm and funny"]
    dev_labels = torch.tensor([0, 1, 0, 1])
    train, dev = plain.add_texts(SENTENCES, 2, "add"), plain.add_texts(dev_texts, 2, "add")
    tuner = SimpleNamespace(train_batches=[(train, LABELS)], dev=([dev], dev_labels),
                            config=SimpleNamespace(class_weights=None), start_scores=None)
    job = TuneJob(model=str(tiny_bert), prototypes="auto", prompt_placement="add")
    record, held_out = _set_prototypes(job, plain, tuner, None)

    e_train, e_dev, d = plain.embeddings(train), plain.embeddings(dev), plain.head.descriptions

    def head(e, labels, w):
        vectors = torch.stack([w * e[labels == c].mean(0) + (1 - w) * d[c] for c in (0, 1)])
        return vectors / vectors.norm(dim=1, keepdim=True)

    right = {w: torch.cat([(e_dev @ head(e_train, LABELS, w).T).argmax(-1) == dev_labels,
                           (e_train @ head(e_dev, dev_labels, w).T).argmax(-1) == LABELS]) for w in PROTOTYPE_WEIGHTS}
    cross = {w: float(right[w].double().mean()) for w in PROTOTYPE_WEIGHTS}
    w = record["weight"]                # its cross-fitted scores, for the class prior's strength
    torch.testing.assert_close(held_out[0], torch.cat([e_dev @ head(e_train, LABELS, w).T,
                                                       e_train @ head(e_dev, dev_labels, w).T]), rtol=0, atol=1e-12)
    assert torch.equal(held_out[1], torch.cat([dev_labels, LABELS]))
    assert record["cross_accuracy"] == {str(w): a for w, a in cross.items()}
    assert record["cross_p"] == {str(w): gain_p(right[0.0], right[w]) for w in PROTOTYPE_WEIGHTS[1:]}
    w = record["weight"]
    assert w == choose_weight(cross, {}, "best") == max(PROTOTYPE_WEIGHTS, key=lambda v: (cross[v], -v))
    torch.testing.assert_close(plain.head.labels.T, head(e_train, LABELS, w), rtol=0, atol=1e-12)
    torch.testing.assert_close(tuner.start_scores[0], e_dev @ head(e_train, LABELS, w).T, rtol=0, atol=1e-12)
    together = head(torch.cat([e_train, e_dev]), torch.cat([LABELS, dev_labels]), w)
    torch.testing.assert_close(plain.head.label_sets[FINAL_PROTOTYPES].T, together, rtol=0, atol=1e-12)


def test_choose_weight_keeps_the_most_accurate_or_under_significant_a_significant_gain():
    accuracies = {0.0: 0.70, 0.25: 0.75, 0.5: 0.80, 0.75: 0.80, 1.0: 0.60}
    p_values = {0.25: 0.2, 0.5: 0.03, 0.75: 0.01, 1.0: 0.9}
    assert choose_weight(accuracies, p_values, "best") == 0.5               # ties: the smaller
    assert choose_weight(accuracies, p_values, "significant") == 0.5
    assert choose_weight(accuracies, {**p_values, 0.5: 0.2}, "significant") == 0.75
    assert choose_weight(accuracies, {w: 0.5 for w in p_values}, "significant") == 0.0
    with pytest.raises(ValueError, match="selection must be one of"):
        choose_weight(accuracies, p_values, "luck")


def test_cma_searches_one_block_per_generation_and_replays_exactly():
    """Divide and conquer: generation g's candidates differ from the other blocks' means only
    in block g mod K; replaying the told losses rebuilds the same search; another run's
    candidates are refused."""
    def run(search, generations):
        asked, told = [], []
        for g in range(generations):
            latents = search.ask(g)
            losses = (latents ** 2).sum(1)
            search.tell(latents, losses)
            asked.append(latents)
            told.append(losses)
        return np.stack(asked), np.stack(told)

    search = CMASearch(3, 4, 6, 0.5, 5.0, seed=7)
    mean = search.mean()
    latents = search.ask(4)                                 # block 1
    assert np.array_equal(latents[:, :4], np.repeat(mean[None, :4], 6, 0))
    assert np.array_equal(latents[:, 8:], np.repeat(mean[None, 8:], 6, 0))
    assert not np.array_equal(latents[:, 4:8], np.repeat(mean[None, 4:8], 6, 0))
    asked, told = run(CMASearch(3, 4, 6, 0.5, 5.0, seed=7), 7)
    again = CMASearch(3, 4, 6, 0.5, 5.0, seed=7)
    replay(again, asked, told)
    fresh = CMASearch(3, 4, 6, 0.5, 5.0, seed=7)
    run(fresh, 7)
    assert np.array_equal(again.ask(7), fresh.ask(7))
    with pytest.raises(ReplayMismatch):
        replay(CMASearch(3, 4, 6, 0.5, 5.0, seed=8), asked, told)


def test_spsa_descends_a_quadratic_with_antithetic_pairs():
    target = np.linspace(-1, 1, 10)
    search = SPSASearch(1, 10, 8, 0.5, 5.0, seed=3, lr=0.1)
    start = ((search.mean() - target) ** 2).sum()
    for g in range(200):
        latents = search.ask(g)
        assert np.allclose(latents[:4] + latents[4:], 2 * search.mean())      # z + eps u and z - eps u
        search.tell(latents, ((latents - target) ** 2).sum(1))
    assert ((search.mean() - target) ** 2).sum() < start / 20
    with pytest.raises(ValueError, match="even"):
        SPSASearch(1, 10, 5, 0.5, 5.0, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,depth,prior", [("cma", "deep", "uniform"), ("spsa", "input", "pool")])
def test_a_run_keeps_the_best_on_dev_and_resumes_from_a_checkpoint_that_executes_nothing(
        tiny_bert, tmp_path, optimizer, depth, prior):
    """A run resumed from its checkpoint ends as the uninterrupted one (with a class prior
    too: its strength chosen again from the start's dev scores); the checkpoint is 0600 and
    loads without pickle: a pickle in its place, or candidates edited, are refused."""
    prototypes = "auto" if optimizer == "cma" else 0.5
    job = TuneJob(model=str(tiny_bert), mode="plaintext", prompt_depth=depth, optimizer=optimizer,
                  head="similarity", prototypes=prototypes, class_prior=prior, **SMALL)
    whole = run_job(job, tmp_path / "whole")
    assert whole["job"]["prompt_depth"] == depth and "prototypes_test" in whole["accuracy"]
    if prototypes == "auto":                 # the weight chosen by cross-fitting (choose_weight)
        record = whole["prototypes"]
        weight, dev = record["weight"], record["dev_accuracy"]
        cross = {float(w): a for w, a in record["cross_accuracy"].items()}
        assert weight == choose_weight(cross, {float(w): p for w, p in record["cross_p"].items()}, "best")
        assert set(record["cross_p"]) == set(dev) - {"0.0"}                # each against weight 0
        # the start is the chosen head without a prompt: its dev accuracy is the one measured
        assert whole["accuracy"]["start_dev"] == dev[str(weight)]
    else:
        assert whole["prototypes"] == {"weight": 0.5}
    assert whole["accuracy"]["best_dev"] >= whole["accuracy"]["start_dev"]
    assert whole["kept_start"] == (whole["accuracy"]["best_generation"] == 0)
    checkpoint = tmp_path / "whole" / "checkpoint.npz"
    assert checkpoint.stat().st_mode & 0o777 == 0o600
    state = load_checkpoint(checkpoint)
    assert state.generation == 4 and len(state.asked) == 4
    blocks = [r["block"] for r in whole["generations"]]
    assert blocks == ([0, 1, 0, 1] if depth == "deep" else [0, 0, 0, 0])   # the tiny model has 2 layers

    # a run killed after two generations, resumed to four
    cut = tmp_path / "cut"
    cut.mkdir()
    _truncate(checkpoint, cut / "checkpoint.npz", 2)
    resumed = run_job(job, cut, resume=True)
    for a, b in zip(whole["generations"], resumed["generations"]):
        assert (a["loss_min"], a["loss_mean"], a["dev_accuracy"]) == (b["loss_min"], b["loss_mean"], b["dev_accuracy"])
    assert resumed["test_predictions"] == whole["test_predictions"]
    assert resumed["prior_strength"] == whole["prior_strength"]
    assert (whole["prior_strength"] is None) == (prior == "uniform")

    marker = tmp_path / "executed"
    evil = tmp_path / "evil"
    evil.mkdir()

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (evil / "checkpoint.npz").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="not a tuning checkpoint"):
        run_job(job, evil, resume=True)
    assert not marker.exists()
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    _truncate(checkpoint, tampered / "checkpoint.npz", 3, edit=True)
    with pytest.raises(ValueError, match="another run's or a tampered checkpoint"):
        run_job(job, tampered, resume=True)


def _truncate(source, target, generations, edit=False):
    """A checkpoint of the first `generations` generations of `source` (what a run killed
    then would have left), its candidates edited if asked."""
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["generation"] = generations
    meta["history"] = meta["history"][:generations]
    meta["best_generation"] = min(meta["best_generation"], generations)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays["asked"], arrays["losses"] = arrays["asked"][:generations].copy(), arrays["losses"][:generations]
    if edit:
        arrays["asked"][-1, 0, 0] += 0.25
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    target.write_bytes(buffer.getvalue())


def test_statistics_of_a_gain_match_their_definitions():
    scipy_stats = pytest.importorskip("scipy.stats")
    for only_a, only_b in ((0, 0), (3, 12), (40, 61), (250, 300)):
        want = 1.0 if only_a + only_b == 0 else scipy_stats.binomtest(only_b, only_a + only_b, 0.5).pvalue
        assert mcnemar_exact(only_a, only_b) == pytest.approx(want, rel=1e-9)
    for new, old in ((5, 0), (2, 1), (7, 1), (12, 3), (61, 40)):
        want = scipy_stats.binomtest(new, new + old, 0.5, alternative="greater").pvalue
        assert mcnemar_one_sided(new, old) == pytest.approx(want, rel=1e-9)
    assert mcnemar_one_sided(0, 0) == mcnemar_one_sided(3, 3) == mcnemar_one_sided(1, 4) == 1.0
    # 5 texts only the new model gets right, 1 only the old: P(X >= 5), X ~ B(6, 1/2)
    assert gain_p([1, 0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 0]) == pytest.approx(7 / 64)
    low, high = wilson_interval(70, 100)
    want = scipy_stats.binomtest(70, 100).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((want.low, want.high), rel=1e-9)
    truth = np.array([0, 1] * 250)
    before = truth.copy()
    before[:100] = 1 - before[:100]                          # 80% right
    after = truth.copy()
    after[80:110] = 1 - after[80:110]                        # 94% right, 20 texts only before gets right
    c = compare_predictions(before, after, truth)
    assert c["zero_shot"]["accuracy"] == 0.8 and c["tuned"]["accuracy"] == 0.94
    assert (c["only_zero_shot_right"], c["only_tuned_right"]) == (10, 80)
    assert c["gain_interval"][0] < 0.14 < c["gain_interval"][1] and c["significant"]
    assert "+14.0 points" in summary_line(c) and "significant" in summary_line(c)
    same = compare_predictions(before, before, truth)
    assert same["mcnemar_p"] == 1.0 and not same["significant"] and same["gain_interval"] == (0.0, 0.0)


class _Scores:
    """A scorer whose dev answers depend only on whether the prompt is the start (zero): the
    start gets `start` of 32 dev texts right, every searched prompt `searched` (a superset);
    training losses fall with the prompt's distance from zero, so the search moves."""

    def __init__(self, start: int, searched: int):
        self.start, self.searched = start, searched

    def scores(self, handle, prompts):
        P = prompts.shape[0]
        labels = torch.arange(32) % 2
        out = torch.zeros(P, 32, 2, dtype=torch.float64)
        for i in range(P):
            right = self.start if float(prompts[i].abs().sum()) == 0 else self.searched
            margin = 0.01 + 0.001 * float(prompts[i].abs().sum())
            sign = torch.where(torch.arange(32) < right, 1.0, -1.0).double() * margin
            out[i, torch.arange(32), labels] = sign
        return out


@pytest.mark.parametrize("searched,selection,kept", [(22, "significant", False), (22, "best", True),
                                                     (28, "significant", True)])
def test_a_searched_prompt_is_kept_only_on_a_significant_dev_gain(searched, selection, kept):
    """A prompt 2 of 32 dev texts better than the start (one-sided p = 0.25) replaces it only
    under selection "best"; 8 better (p = 0.0039) replaces it under "significant" too."""
    space = PromptSpace(4, 2, 8, 1.0, 0.5, seed=1)
    labels = torch.arange(32) % 2
    cfg = TuningConfig(popsize=4, generations=4, eval_every=2, seed=3, selection=selection)
    tuner = Tuner(_Scores(20, searched), space, cfg, [("train", labels)], ("dev", labels))
    tuner.start()
    while not tuner.done:
        tuner.step()
    state = tuner.state
    assert state.start_dev_accuracy == 20 / 32 and state.kept_start == (not kept)
    p = [r.dev_p for r in state.history if r.dev_p is not None]
    assert p == [pytest.approx(mcnemar_one_sided(searched - 20, 0))] * 2
    assert state.best_dev_accuracy == (searched if kept else 20) / 32
    with pytest.raises(ValueError, match="selection must be one of"):
        Tuner(_Scores(20, searched), space, TuningConfig(selection="luck"), [("train", labels)], ("dev", labels))


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["uniform", "3,1"])
def test_an_mpc_run_with_deep_prompts_and_prototypes_follows_its_plaintext_twin(tiny_bert, tmp_path, prior):
    """The same job under MPC and in plaintext: the prototype weight chosen on dev (and with a
    class prior, its strength), the searched blocks, and the test predictions of the model
    without a prompt (by both class sets) agree; every generation's best loss is within MPC's
    error."""
    from secptune.tuning.job import PROTOTYPE_WEIGHTS

    runs = {mode: run_job(TuneJob(model=str(tiny_bert), mode=mode, prompt_depth="deep", head="similarity",
                                  prototypes="auto", class_prior=prior, **dict(SMALL, generations=2)),
                          tmp_path / mode)
            for mode in ("plaintext", "mpc")}
    plain, mpc = runs["plaintext"], runs["mpc"]
    assert mpc["prototypes"]["weight"] in PROTOTYPE_WEIGHTS
    assert mpc["prototypes"]["weight"] == plain["prototypes"]["weight"]
    assert [g["block"] for g in mpc["generations"]] == [0, 1]
    for name in ("zero_shot", "prototypes"):
        assert mpc["test_predictions"][name] == plain["test_predictions"][name]
    for a, b in zip(plain["generations"], mpc["generations"]):
        assert abs(a["loss_min"] - b["loss_min"]) < 2e-2
    # generation 0 takes the start's dev scores from the pass that chose the weight: it costs
    # one minibatch pass, as a generation without a dev evaluation does
    first, second = (g["cost"] for g in mpc["generations"])
    assert first["rounds"] < second["rounds"]
    if prior == "uniform":
        assert mpc["accuracy"]["start_dev"] == mpc["prototypes"]["dev_accuracy"][str(mpc["prototypes"]["weight"])]
        assert mpc["prior_strength"] is None
    else:
        assert mpc["prior_strength"]["strength"] == plain["prior_strength"]["strength"]
    assert mpc["cost"]["per_generation"]["rounds"] > 0 and "comparison" in mpc
