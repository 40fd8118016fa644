"""Each party's CURVE key pair (`secptune keys`), in ZeroMQ's certificate files.

`make_keys(folder)` writes `<party>.key` (the public key: give it to everyone, list it in
parties.toml) and `<party>.key_secret` (the secret key: it stays on that party's machine)
for every party.  The files are ZeroMQ's own certificate format (`zmq.auth`), Z85 text.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from ..runfolder import make_private_folder, write_private
from .comm import PARTIES


class KeyFileError(ValueError):
    """A key file that is missing or unreadable."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes           # Z85, 40 characters
    secret: bytes | None    # Z85; None for a peer's key


def make_keys(folder: str | Path, parties=PARTIES, overwrite: bool = False) -> list[Path]:
    """A fresh key pair per party in `folder`; returns the files written.  A secret key file is
    0600 from its first byte (never readable while it is written), a folder created here 0700."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE: no encrypted transport")
    folder = Path(folder)
    make_private_folder(folder)
    written = []
    for party in parties:
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}; parties are {', '.join(PARTIES)}")
        public, secret = folder / f"{party}.key", folder / f"{party}.key_secret"
        if not overwrite and (public.exists() or secret.exists()):
            raise FileExistsError(f"{public} exists: keys are not overwritten (pass --force to replace them)")
        public_key, secret_key = zmq.curve_keypair()
        # zmq.auth's certificate format (zmq.auth.load_certificate reads it); not
        # zmq.auth.create_certificates, which opens the secret file with the umask's mode
        write_private(secret, _certificate("Secret", public_key, secret_key))
        public.write_text(_certificate("Public", public_key))
        written += [public, secret]
    return written


def _certificate(kind: str, public: bytes, secret: bytes | None = None) -> str:
    lines = [f"#   ****  Generated on {datetime.datetime.now()} by secptune  ****",
             f"#   ZeroMQ CURVE **{kind}** Certificate",
             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions." if secret else
             "#   Exchange securely, or use a secure mechanism to verify the contents", "", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the public key {path}: {exc}") from None
    if not public:
        raise KeyFileError(f"{path} holds no public key")
    return public


def load_pair(secret_path: str | Path) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the secret key {secret_path}: {exc}") from None
    if not secret:
        raise KeyFileError(f"{secret_path} holds no secret key (the secret key file ends in .key_secret)")
    return KeyPair(public, secret)
