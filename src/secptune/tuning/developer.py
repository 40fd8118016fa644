"""What the model developer computes for a tuning job: the calibrated public ranges of the
model's activations, for the owner's public settings (`DeploymentRequest`), on the
developer's own texts.  The same function serves a run in one process and a developer on
another host (`secptune serve --role developer`)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..data import list_tasks, load_task
from ..models import MaskedLMTask, SentenceTask
from ..models.calibration import calibrate
from ..models.weights import prompt_scales
from .prompt import PromptSpace, space_for

#: the developer's calibration: texts per other packaged task, random prompts, seed
CALIBRATION_TEXTS = 32
CALIBRATION_PROMPTS = 3
CALIBRATION_SEED = 1234


@dataclass(frozen=True)
class DeploymentRequest:
    """The owner's public settings that the developer calibrates and deploys for: the prompt
    space's shape, placement and spread, the text length, the head (a masked-LM task's
    verbalizer words and template), the embedding mode, and which packaged task to leave out
    of the calibration texts (None for the owner's own file).  No text, label, seed or latent."""

    task: str | None
    max_length: int
    prompt_length: int
    prompt_placement: str
    prompt_depth: str
    dim: int
    sigma0: float
    bound: float
    projection: str
    head: str                       # "auto", "similarity" or "mlm"
    verbalizers: tuple[tuple[str, ...], ...] | tuple[str, ...]
    template: str
    embedding: str
    calibrate: bool = True

    def to_wire(self) -> dict:
        return asdict(self)

    @classmethod
    def from_wire(cls, data) -> "DeploymentRequest":
        """The request a peer sent; a malformed one is a one-line `ValueError`."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - names or (names - {"calibrate"}) - set(data):
            raise ValueError("a malformed deployment request")
        verbalizers = tuple(tuple(v) if isinstance(v, list) else v for v in data["verbalizers"])
        return cls(**dict(data, verbalizers=verbalizers))


def developer_calibration(request: DeploymentRequest, config, weights, attention, tokenizer, scoring_task,
                          space: PromptSpace, gelu_channels: bool = True):
    """The developer's calibrated ranges (models/calibration.py), on its own text: here the
    packaged corpora of the other tasks (none of the owner's texts), each text with prompts
    drawn from the prompt space's distribution (latents uniform within the bounds; the
    developer knows the space's settings, not the owner's projection or latents), and
    without a prompt: every run scores the model without one (its zero-shot accuracy, and
    CMA-ES's start with added prompts), whose activations the random prompts need not cover
    (all-mpnet-base-v2's feed-forward LayerNorm inputs reach variances of 2^10 without a
    prompt, 2^3 at most with them: clamped to the prompted ranges, its zero-shot accuracy on
    tweets fell from 84% to 43%).  `gelu_channels`: publish a GeLU bound per feed-forward
    channel (the default: the dealer deals each channel's narrower series), or one per layer
    (fewer numbers about the weights' activations made public)."""
    texts = calibration_texts(request.task)
    developer_space = replace(space, seed=CALIBRATION_SEED)
    rng = np.random.default_rng(CALIBRATION_SEED)
    bound = request.bound
    prompts = developer_space.prompts(rng.uniform(-bound, bound, (CALIBRATION_PROMPTS, space.latent_size)))
    task = scoring_task if isinstance(scoring_task, MaskedLMTask) else None
    prompted, unprompted = (calibrate(config, weights, attention, tokenizer, texts, request.max_length, p, task,
                                      placement=request.prompt_placement, gelu_channels=gelu_channels)
                            for p in (prompts, None))
    return prompted.union(unprompted)


def calibration_texts(task: str | None) -> list[str]:
    """The developer's calibration texts: CALIBRATION_TEXTS of each packaged task but `task`."""
    texts = []
    for name in list_tasks():
        if name == task:
            continue
        pool = load_task(name).texts
        texts.extend(random.Random(CALIBRATION_SEED).sample(pool, min(CALIBRATION_TEXTS, len(pool))))
    return texts


def calibration_for(request: DeploymentRequest, config, weights, attention, tokenizer, gelu_channels: bool = True):
    """The calibration a developer on another host runs for `request`: the prompt space and
    the head built from the request's public settings alone."""
    space = space_for(request.dim, request.prompt_length, config.hidden_size, prompt_scales(weights),
                      request.sigma0, request.projection, 0, request.prompt_depth, config.num_layers)
    kind = request.head if request.head != "auto" else ("mlm" if config.has_lm_head else "similarity")
    task = MaskedLMTask(request.verbalizers, request.template) if kind == "mlm" else SentenceTask([])
    return developer_calibration(request, config, weights, attention, tokenizer, task, space, gelu_channels)
