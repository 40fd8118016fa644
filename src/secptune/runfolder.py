"""A run folder is its owner's alone, and one run's at a time.

A run folder (`secptune tune --out`, `convert --out`, `train --out`, `compare --out`) holds
the owner's secrets: the checkpoint (the search state, the tuned prompt) and results.json
(predictions on the owner's texts).  So:

- a folder this module creates is 0700, and while a run holds it the process's umask is 077,
  so every file the run writes (results, plots, checkpoints written by any module) is 0600
  from its first byte; `write_private` writes one file 0600 atomically (a temporary file
  opened with the mode, then renamed), also over an older 0644 file;
- `hold_run_folder(out)` takes an exclusive lock on `out/.secptune.lock` for the run's life:
  a second run, or a `--resume`, on a folder that a live process holds fails at once with
  `RunFolderBusy`.  The lock is the kernel's (`flock`): it goes when its process ends, however
  it ends (an exception, SIGKILL, a crash), so a stale lock file of a dead process never blocks
  a later run; the PID written in it only names the holder in the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import threading
from pathlib import Path

LOCK_FILE = ".secptune.lock"

_umask_lock = threading.Lock()
_umask_depth = 0
_umask_saved = 0


class RunFolderBusy(ValueError):
    """Another live process holds the run folder."""


def write_private(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path`, readable by its owner only (0600) from creation."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)           # O_TRUNC of a leftover temporary file keeps its old mode
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def make_private_folder(path: str | os.PathLike) -> bool:
    """Create `path` (and its parents) with the leaf 0700; True if it was created here.  An
    existing folder keeps its mode (it may be the user's own, e.g. the current folder)."""
    path = Path(path)
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    os.chmod(path, 0o700)              # mkdir's mode is filtered by the umask
    return True


@contextlib.contextmanager
def _private_umask():
    # the umask is per process: nested and concurrent holders share one saved value
    global _umask_depth, _umask_saved
    with _umask_lock:
        if _umask_depth == 0:
            _umask_saved = os.umask(0o077)
        _umask_depth += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_depth -= 1
            if _umask_depth == 0:
                os.umask(_umask_saved)


@contextlib.contextmanager
def hold_run_folder(out: str | os.PathLike):
    """Create `out` private if absent, lock it for this run, make this run's files 0600.
    Raises `RunFolderBusy` (one line) if another live process holds it.  A folder created
    here and left empty (the run failed before writing anything) is removed on exit."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderBusy(f"{out} is a file, not a folder: choose another --out")
    created = make_private_folder(out)
    lock_path = out / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusy(f"{out} is in use by another secptune run (process {holder}): wait for it "
                                f"to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        with _private_umask():
            yield out
    finally:
        os.close(fd)                    # releases the lock
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in out.iterdir()] == [LOCK_FILE]:
                    lock_path.unlink()
                    out.rmdir()


def locks_run_folder(param: str = "out"):
    """Decorate a run function so that it holds its `param` folder (`hold_run_folder`) while
    it runs."""

    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[param]
            with hold_run_folder(folder):
                return func(*args, **kwargs)

        return run

    return decorate
