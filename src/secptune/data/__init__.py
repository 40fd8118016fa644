"""Labelled text-classification data for prompt tuning, available offline.

Five real tasks ship inside the package (``list_tasks``/``load_task``); user data loads from
CSV, TSV, JSON Lines or a saved Hugging Face dataset (``load_file``); ``few_shot_split`` draws
Black-Box-Tuning-style k-shot train/dev sets and a held-out test set.
"""

from secptune.data.errors import DataError
from secptune.data.files import load_file, with_descriptions
from secptune.data.splits import Examples, Split, few_shot_split
from secptune.data.task import Task
from secptune.data.tasks import TASKS, TaskSpec, list_tasks, load_task

__all__ = [
    "TASKS",
    "DataError",
    "Examples",
    "Split",
    "Task",
    "TaskSpec",
    "few_shot_split",
    "list_tasks",
    "load_file",
    "load_task",
    "with_descriptions",
]
