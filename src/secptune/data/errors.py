"""The one exception type of the data package.

It subclasses ValueError so that callers who already guard input parsing with ``except
ValueError`` keep working, while a CLI can catch ``DataError`` alone and print its one-line
message instead of a traceback: every message names the file, task or column at fault.
"""

from __future__ import annotations


class DataError(ValueError):
    """A task, data file or split request that cannot be served as asked."""
