"""Secrets and run folders that are the owner's alone: secret keys and run files are 0600 from
their first byte whatever the umask, run folders 0700; one run holds a folder at a time (a
second run or a --resume on it: one line, exit 2), and a dead run's lock never blocks; a
crafted conversion checkpoint is refused and runs nothing."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import secptune.runfolder as runfolder
from secptune.cli import main
from secptune.mpc.keys import load_pair, make_keys
from secptune.runfolder import LOCK_FILE, RunFolderBusy, hold_run_folder, write_private
from secptune.tuning.job import TuneJob, run_job
from test_network import SMALL, SRC, loopback_addresses, write_parties


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """The most permissive umask: what is private is so by its own mode, not the umask's."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def watched_writes(monkeypatch):
    """The mode of every file `write_private` writes, taken when its first byte is written."""
    seen = []
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(runfolder.os, "fdopen", fdopen)
    return seen


def test_secret_keys_are_0600_from_their_first_byte(tmp_path, open_umask, watched_writes):
    written = make_keys(tmp_path / "keys")
    secrets = [p for p in written if p.name.endswith(".key_secret")]
    assert len(secrets) == 5 and watched_writes == [0o600] * 5
    assert all(mode(p) == 0o600 for p in secrets) and mode(tmp_path / "keys") == 0o700
    assert load_pair(secrets[0]).secret                      # zmq.auth still reads them
    make_keys(tmp_path / "keys", ["owner"], overwrite=True)  # replacing a key keeps it private
    assert mode(tmp_path / "keys" / "owner.key_secret") == 0o600


def test_write_private_replaces_a_readable_file_with_a_private_one(tmp_path, open_umask, watched_writes):
    old = tmp_path / "results.json"
    old.write_text("{}")
    os.chmod(old, 0o644)
    write_private(old, '{"new": 1}')
    assert mode(old) == 0o600 and old.read_text() == '{"new": 1}' and watched_writes == [0o600]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]          # no temporary file left


def test_a_tuning_runs_folder_is_0700_and_every_file_in_it_0600(tmp_path, tiny_bert, open_umask):
    out = tmp_path / "run"
    run_job(TuneJob(model=str(tiny_bert), mode="plaintext", **dict(SMALL, generations=1)), out)
    files = sorted(p.name for p in out.iterdir())
    assert {"results.json", "checkpoint.npz", "learning-curve.png"} <= set(files)
    assert mode(out) == 0o700
    assert {name: mode(out / name) for name in files} == {name: 0o600 for name in files}
    assert os.umask(0) == 0                                  # the run restored the process's umask


def test_a_folder_holds_one_run_at_a_time_and_a_dead_holder_never_blocks(tmp_path, tiny_bert):
    out = tmp_path / "run"
    keys = tmp_path / "keys"
    make_keys(keys)
    # the first run waits for parties that never come: it holds the folder meanwhile
    parties = write_parties(tmp_path, keys, loopback_addresses(), connect_timeout=120)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-m", "secptune.cli", "tune", "--parties", str(parties),
                              "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ((out / LOCK_FILE).exists() and (out / LOCK_FILE).read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        plain = ["tune", "--model", str(tiny_bert), "--mode", "plaintext", "--attention", "softmax", "--shots", "4",
                 "--test-size", "4", "--max-length", "12", "--prompt-length", "2", "--dim", "8", "--popsize", "4",
                 "--generations", "1", "--out", str(out)]
        for extra in ([], ["--resume"]):
            second = subprocess.run([sys.executable, "-m", "secptune.cli", *plain, *extra], capture_output=True,
                                    text=True, timeout=120, env=env)
            errors = [line for line in second.stderr.splitlines() if line.startswith("secptune: error")]
            assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
            assert errors == [f"secptune: error: {out} is in use by another secptune run (process {first.pid}): "
                              f"wait for it to end, or choose another --out"], second.stderr
        with pytest.raises(RunFolderBusy):                   # in this process too
            with hold_run_folder(out):
                pass
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # its lock file stays, with the dead process's id in it; the kernel's lock went with it
    assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
    assert main(plain) == 0
    assert (out / "results.json").is_file()


def test_a_crafted_conversion_checkpoint_is_refused_and_runs_nothing(tmp_path, tiny_bert, capsys):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    out = tmp_path / "conversion"
    out.mkdir()
    cases = {"code": {"settings": {}, "fingerprint": "", "state": {}, "params": {}, "optimizer": Payload()},
             "tensor": torch.zeros(3),
             "half": {"settings": {}, "state": {}}}
    for name, content in cases.items():
        torch.save(content, out / "checkpoint.pt")
        assert main(["convert", "--model", str(tiny_bert), "--out", str(out), "--resume", "--eval-size", "0",
                     "--steps", "2", "--batch", "2", "--max-length", "16", "--features", "4", "--prompt-tokens", "8"]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"secptune: error: {out / 'checkpoint.pt'}: not a conversion checkpoint"), err
        assert "Traceback" not in "\n".join(err)
    assert not marker.exists()
