"""The owner's class prior in its decisions (tuning.prior): the strength chosen on held-out
scores under the prior's weights, the offsets added to the scores the owner decides by, and
the zero-shot model's own decisions left alone."""

from __future__ import annotations

import math

import pytest
import torch

from secptune.cli import build_parser
from secptune.models import PlainScorer, load_model
from secptune.tuning.job import FINAL_PROTOTYPES, JobError, TuneJob, job_scoring_task, load_job_task, run_job
from secptune.tuning.prior import PRIOR_STRENGTHS, choose_prior_strength, prior_offsets

SMALL = dict(attention="softmax", shots=4, test_size=12, max_length=16, prompt_length=2, dim=8, popsize=4,
             generations=2, batch=4, eval_every=2)


def test_the_offsets_are_the_priors_log_in_score_units():
    torch.testing.assert_close(prior_offsets([0.8, 0.2], 0.5, 20.0),
                               torch.tensor([0.5 * math.log(0.8) / 20, 0.5 * math.log(0.2) / 20], dtype=torch.float64))
    assert torch.equal(prior_offsets([0.8, 0.2], 0.0, 20.0), torch.zeros(2, dtype=torch.float64))


def test_the_strength_is_the_most_accurate_under_the_priors_weights_ties_the_smaller():
    """Prior (0.9, 0.1) at scale 20: beta moves class 0 ahead by beta log 9 / 20 = 0.11 beta.
    Four class-0 texts trail class 1 by 0.05 (right from beta 0.5); the class-1 texts lead by
    0.1 (wrong from beta 1).  Weighted by the prior: 0.64 below 0.5, 1.0 at 0.5 and 0.75, 0.9
    at 1."""
    scores = torch.zeros(20, 2, dtype=torch.float64)
    scores[:4, 1] = 0.05                     # class 0, wrong without the prior
    scores[4:10, 0] = 0.3                    # class 0, right
    scores[10:, 1] = 0.1                     # class 1, right until beta 1
    labels = torch.tensor([0] * 10 + [1] * 10)
    record = choose_prior_strength(scores, labels, [0.9, 0.1], 20.0)
    expected = {0.0: 0.64, 0.25: 0.64, 0.5: 1.0, 0.75: 1.0, 1.0: 0.9}
    assert record["accuracy"] == pytest.approx({str(b): a for b, a in expected.items()})
    assert record["strength"] == 0.5
    uniform = choose_prior_strength(scores, labels, [0.5, 0.5], 20.0)     # the offsets move no decision
    assert uniform["strength"] == 0.0 and len(set(uniform["accuracy"].values())) == 1
    assert set(record["accuracy"]) == {str(b) for b in PRIOR_STRENGTHS}
    with pytest.raises(ValueError, match="sum to 1"):
        choose_prior_strength(scores, labels, [3.0, 1.0], 20.0)


def test_a_strength_needs_a_prior_and_is_a_number_at_least_zero():
    TuneJob(prior_strength=0.0).check()
    TuneJob(class_prior="pool", prior_strength=1.5).check()
    with pytest.raises(JobError, match="give --class-prior"):
        TuneJob(class_prior="uniform", prior_strength=1.0).check()
    with pytest.raises(JobError, match="auto or a number >= 0"):
        TuneJob(class_prior="pool", prior_strength=-1.0).check()
    args = build_parser().parse_args(["tune", "--class-prior", "pool", "--prior-strength", "0.75"])
    assert args.prior_strength == 0.75
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--prior-strength", "strong"])


def test_a_job_decides_by_its_prior_and_leaves_the_zero_shot_model_alone(tiny_bert, tokenizer, tmp_path):
    """With prior (0.9, 0.1) at strength 2, the test predictions of the kept start are the
    argmax of its scores (the prototypes of the training and dev texts, recomputed here) plus
    the offsets; at strength 0 they are the argmax of the scores; zero-shot is the same in
    both runs, and the stronger prior only ever moves a prediction to the common class."""
    runs = {b: run_job(TuneJob(model=str(tiny_bert), mode="plaintext", task="sms-spam", head="similarity",
                               class_prior="9,1", prior_strength=b, **SMALL), tmp_path / str(b))
            for b in (0.0, 2.0)}
    weak, strong = runs[0.0], runs[2.0]
    assert strong["prior_strength"] == {"strength": 2.0} and weak["prior_strength"] == {"strength": 0.0}
    assert strong["test_predictions"]["zero_shot"] == weak["test_predictions"]["zero_shot"]
    assert strong["prototypes"]["weight"] == weak["prototypes"]["weight"]

    job = TuneJob(model=str(tiny_bert), task="sms-spam", head="similarity", **SMALL)
    task, split = load_job_task(job)
    config, weights = load_model(tiny_bert)
    scoring_task, scale = job_scoring_task(job, task, config)
    plain = PlainScorer(config, weights, tokenizer, scoring_task, max_length=job.max_length)
    shots = plain.add_texts(split.train.texts + split.dev.texts)
    plain.set_prototypes([shots], split.train.label_ids + split.dev.label_ids,
                         {FINAL_PROTOTYPES: strong["prototypes"]["weight"]})
    scores = plain.scores(plain.add_texts(split.test.texts))[0]
    assert weak["test_predictions"]["prototypes"] == scores.argmax(-1).tolist()
    shifted = (scores + prior_offsets([0.9, 0.1], 2.0, scale)).argmax(-1).tolist()
    assert strong["test_predictions"]["prototypes"] == shifted
    if strong["kept_start"]:
        assert strong["test_predictions"]["tuned"] == shifted
    pairs = list(zip(weak["test_predictions"]["prototypes"], strong["test_predictions"]["prototypes"]))
    assert all(s == w or s == 0 for w, s in pairs)
