"""Forward-only prompt tuning (Black-Box Tuning): the data owner's loop.

    ask -> prompts = A z -> share -> secure forward -> scores revealed to the owner -> loss
        -> tell -> checkpoint

The owner's labels, losses, the latent z, the projection A and the optimiser's state never
leave it: the servers see shares of the prompts and of the texts, and return shares of the
scores.
"""

from .loop import GenerationRecord, Tuner, TuningState
from .objective import LOSSES, accuracy, balanced_accuracy, loss_of
from .prompt import PROJECTIONS, PromptSpace

__all__ = ["GenerationRecord", "LOSSES", "PROJECTIONS", "PromptSpace", "Tuner", "TuningState", "accuracy", "balanced_accuracy",
           "loss_of"]
