"""Each party's CURVE key pair (`secptune keys`), in ZeroMQ's certificate files.

`make_keys(folder)` writes `<party>.key` (the public key: give it to everyone, list it in
parties.toml) and `<party>.key_secret` (the secret key: it stays on that party's machine)
for every party.  The files are ZeroMQ's own certificate format (`zmq.auth`), Z85 text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from .comm import PARTIES


class KeyError_(ValueError):
    """A key file that is missing or unreadable."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes           # Z85, 40 characters
    secret: bytes | None    # Z85; None for a peer's key


def make_keys(folder: str | Path, parties=PARTIES, overwrite: bool = False) -> list[Path]:
    """A fresh key pair per party in `folder`; returns the files written."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE: no encrypted transport")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for party in parties:
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}; parties are {', '.join(PARTIES)}")
        public, secret = folder / f"{party}.key", folder / f"{party}.key_secret"
        if not overwrite and (public.exists() or secret.exists()):
            raise FileExistsError(f"{public} exists: keys are not overwritten (pass --force to replace them)")
        public_file, secret_file = zmq.auth.create_certificates(folder, party)
        os.chmod(secret_file, 0o600)
        written += [Path(public_file), Path(secret_file)]
    return written


def load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read the public key {path}: {exc}") from None
    if not public:
        raise KeyError_(f"{path} holds no public key")
    return public


def load_pair(secret_path: str | Path) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read the secret key {secret_path}: {exc}") from None
    if not secret:
        raise KeyError_(f"{secret_path} holds no secret key (the secret key file ends in .key_secret)")
    return KeyPair(public, secret)
