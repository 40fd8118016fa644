"""Class prototypes that follow the prompt (`--search-prototypes prompted`, tuning.prompted):
the leave-one-out head against its definition, under MPC against plaintext, the start
unchanged, and a job that uses them in both modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secptune.models import PlainScorer, SecureScorer, load_model
from secptune.models.heads import SentenceSimilarityHead
from secptune.models.scoring import (SentenceTask, forward_prompted_embeddings, leave_one_out_mixing,
                                     pass_groups)
from secptune.mpc import Config, LocalSession
from secptune.tuning.job import JobError, TuneJob, run_job
from secptune.tuning.prompt import PromptSpace
from secptune.tuning.prompted import SEARCH_PROMPTED, PromptedPrototypes

SENTENCES = ["a total waste of time", "gorgeous and witty", "dull, dull, dull", "I loved every minute",
             "not worth the ticket", "a triumph", "flat and lifeless", "warm and funny"]
LABELS = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
TASK = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])


def _by_definition(e, d, labels, weight):
    """Text i, class c: normalise(weight * mean of the other texts of class c + (1 - weight) d_c),
    d_c alone where no other text has class c; (P, B, C) cosines."""
    P, B, _ = e.shape
    C = d.shape[0]
    out = torch.zeros(P, B, C, dtype=torch.float64)
    for p in range(P):
        for i in range(B):
            for c in range(C):
                others = [j for j in range(B) if labels[j] == c and j != i]
                v = weight * e[p, others].mean(0) + (1 - weight) * d[c] if others else d[c]
                out[p, i, c] = e[p, i] @ (v / v.norm())
    return out


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_leave_one_out_scores_follow_their_definition(weight):
    """The Gram-space computation equals the definition to float64 round-off, a class with
    one text in the batch included (its own row: the description alone)."""
    gen = torch.Generator().manual_seed(5)
    P, B, C, H = 3, 9, 3, 16
    head = SentenceSimilarityHead()
    head.set_labels(torch.nn.functional.normalize(torch.randn(C, H, generator=gen, dtype=torch.float64), dim=-1))
    e = torch.nn.functional.normalize(torch.randn(P, B, H, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 0, 1, 0])           # class 2: one text
    got = head.leave_one_out_scores(e, leave_one_out_mixing(labels, C, weight))
    torch.testing.assert_close(got, _by_definition(e, head.descriptions, labels, weight), rtol=0, atol=1e-12)
    mixing = leave_one_out_mixing(labels, C, weight).reshape(B, C, B + C)
    assert (mixing[torch.arange(B), :, torch.arange(B)] == 0).all()          # never in its own rows
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        leave_one_out_mixing(labels, C, 1.5)


def test_prompted_prototypes_under_mpc_follow_plaintext_and_start_where_the_fixed_head_does(tiny_bert, tokenizer):
    """Under MPC the owner shares the prompts and the mixing only; the leave-one-out scores
    and the dev texts' scores against prototypes under a prompt follow plaintext within MPC's
    error; at z = 0 the dev scores are the fixed head's (prototypes of unprompted texts)."""
    config, weights = load_model(tiny_bert)
    space = PromptSpace(8, 2, config.hidden_size, 1.0, 0.5, seed=1)
    prompts = space.prompts(np.random.default_rng(0).uniform(-1, 1, (3, space.latent_size)))
    zero = space.prompts(np.zeros((1, space.latent_size)))
    mixing = leave_one_out_mixing(LABELS, 2, 0.5)
    plain = PlainScorer(config, weights, tokenizer, TASK, max_length=16)
    train, dev = plain.add_texts(SENTENCES, 2, "add"), plain.add_texts(SENTENCES[:4], 2, "add")
    head = PromptedPrototypes(plain, [(train, LABELS)], 0.5, 2)
    loo = plain.leave_one_out_scores(train, prompts, mixing)
    words, key_mask, pool, _, placement = train
    e = forward_prompted_embeddings(plain.model, plain.head, words, prompts, key_mask, pool, placement)
    torch.testing.assert_close(loo, _by_definition(e, plain.head.descriptions, LABELS, 0.5), rtol=0, atol=1e-12)
    at_prompt = head.dev_scores([dev], prompts[:1])
    at_zero = head.dev_scores([dev], zero)
    # the test head: the training and dev texts' prototypes under the kept prompt
    name = head.set_test_head(([dev], LABELS[:4]), prompts[:1])
    shots = torch.cat([forward_prompted_embeddings(plain.model, plain.head, t[0], prompts[:1], t[1], t[2], "add")[0]
                       for t in (train, dev)])
    shot_labels = torch.cat([LABELS, LABELS[:4]])
    vectors = torch.stack([0.5 * shots[shot_labels == c].mean(0) + 0.5 * plain.head.descriptions[c] for c in (0, 1)])
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    torch.testing.assert_close(plain.scores(dev, prompts[:1], [name])[0], e[0, :4] @ vectors.T, rtol=0, atol=1e-12)
    plain.set_prototypes([train], LABELS, {"fixed": 0.5})
    fixed = plain.scores(plain.add_texts(SENTENCES[:4], 0), None, ["fixed"])
    torch.testing.assert_close(at_zero, fixed, rtol=0, atol=1e-12)
    with LocalSession(Config(), timeout=60) as session:
        secure = SecureScorer(session, config, weights, tokenizer, TASK, max_length=16, embedding="public")
        s_train, s_dev = secure.add_texts(SENTENCES, 2, "add"), secure.add_texts(SENTENCES[:4], 2, "add")
        mpc_loo = secure.leave_one_out_scores(s_train, prompts, mixing)
        loo_cost = secure.last_cost
        halves = [(secure.add_texts(SENTENCES[:4], 2, "add"), LABELS[:4]),
                  (secure.add_texts(SENTENCES[4:], 2, "add"), LABELS[4:])]
        mpc_head = PromptedPrototypes(secure, halves, 0.5, 2, texts_per_pass=8)   # both halves in one pass
        mpc_at_prompt = mpc_head.dev_scores([s_dev], prompts[:1])
        prototypes_cost = secure.costs[-2][1]
        secure.scores(s_train, prompts)
        pass_cost = secure.last_cost
    assert (mpc_loo - loo).abs().max() < 2e-3 and (mpc_at_prompt - at_prompt).abs().max() < 2e-3
    # the head costs a few rounds more than the pass it follows: two products, one
    # elementwise product and one inverse square root
    assert pass_cost.rounds < loo_cost.rounds <= pass_cost.rounds + 20
    assert secure.costs[-3][0] == "prototypes" and prototypes_cost.rounds < 1.5 * pass_cost.rounds   # one pass, not two
    assert SEARCH_PROMPTED in plain.head.label_sets


def test_handles_are_grouped_into_passes_of_consecutive_texts():
    assert pass_groups([8, 8, 8, 8], 24) == [[0, 1, 2], [3]]
    assert pass_groups([8, 30, 4], 24) == [[0], [1], [2]]
    assert pass_groups([8, 8], None) == [[0, 1]]


def test_a_job_searches_against_prompted_prototypes_in_both_modes(tiny_bert, tmp_path):
    """A whole job with `--search-prototypes prompted`: plaintext and MPC agree on every
    generation's loss within MPC's error, and the search differs from the fixed head's; at
    weight 0 (the descriptions alone) the two searches are the same."""
    small = dict(attention="softmax", shots=4, test_size=6, max_length=16, prompt_length=2, dim=8, popsize=4,
                 generations=2, batch=8, eval_every=2, head="similarity", selection="best")
    runs = {mode: run_job(TuneJob(model=str(tiny_bert), mode=mode, prototypes=1.0, search_prototypes="prompted",
                                  **small), tmp_path / mode) for mode in ("plaintext", "mpc")}
    plain, mpc = runs["plaintext"], runs["mpc"]
    for a, b in zip(plain["generations"], mpc["generations"]):
        assert abs(a["loss_min"] - b["loss_min"]) < 2e-2
    assert plain["job"]["search_prototypes"] == "prompted"
    fixed = run_job(TuneJob(model=str(tiny_bert), mode="plaintext", prototypes=1.0, search_prototypes="fixed",
                            **small), tmp_path / "fixed")
    assert fixed["generations"][0]["loss_min"] != plain["generations"][0]["loss_min"]
    at_zero = {name: run_job(TuneJob(model=str(tiny_bert), mode="plaintext", prototypes=0.0, search_prototypes=name,
                                     **small), tmp_path / f"zero-{name}") for name in ("fixed", "prompted")}
    same = [[(g["loss_min"], g["loss_mean"], g["dev_accuracy"]) for g in run["generations"]] for run in at_zero.values()]
    assert same[0] == same[1]
    with pytest.raises(JobError, match="--search-prototypes"):
        TuneJob(search_prototypes="moving").check()
