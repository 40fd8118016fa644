"""Converting a pretrained BERT/RoBERTa to random-feature attention: the model developer's
one-off distillation step, in plaintext, before deployment (`secptune convert`).

    settings.py   ConvertSettings (the measured recipe is its defaults), ConversionError
    data.py       the distillation texts (no task's test set), the held-out evaluation sets
    student.py    Student: teacher and student on the model code path; the loss
    distil.py     convert: the training loop, checkpoints, the converted folder
    evaluate.py   evaluate_conversion: the converted model against its source
    delta.py      make_delta: the package's shipped conversion

Reading a converted folder is `models.rfa` (tuning imports that, never this package).
"""

from .data import distillation_texts, held_out_sets, read_texts
from .delta import make_delta
from .distil import convert, write_converted
from .evaluate import evaluate_conversion, noise_band, perturbed, zero_shot_accuracy
from .settings import ConversionError, ConvertSettings
from .student import Student

__all__ = ["ConversionError", "ConvertSettings", "Student", "convert", "distillation_texts", "evaluate_conversion",
           "held_out_sets", "make_delta", "noise_band", "perturbed", "read_texts", "write_converted",
           "zero_shot_accuracy"]
