"""A parties file (parties.toml): each party's address and public key, the protocol's and the
transport's settings.  Every problem in it is one `PartiesFileError` line."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..mpc.comm import PARTIES
from ..mpc.keys import KeyFileError, load_pair, load_public
from ..mpc.network import MAX_MESSAGE, PartyDirectory, Transport, binds, link_endpoint, peers_of
from ..mpc.party import Config


class PartiesFileError(ValueError):
    """A parties file that is missing, malformed or incomplete."""


class HandshakeRefused(ConnectionError):
    """A party refused the session: a setting differs between two parties."""


@dataclass
class Parties:
    """A parties file (parties.toml): see the README's example."""

    path: Path
    addresses: dict[str, str]
    public_key_files: dict[str, Path]
    config: Config = field(default_factory=Config)
    model: str | None = None              # the expected model fingerprint
    encrypt: bool = True
    connect_timeout: float = 30.0
    message_timeout: float = 600.0
    heartbeat: float = 2.0
    max_message: int = MAX_MESSAGE        # bytes: the largest message frame accepted

    @classmethod
    def load(cls, path: str | Path) -> "Parties":
        """Read and check a parties file; every problem is one `PartiesFileError` line."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise PartiesFileError(f"cannot read the parties file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise PartiesFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise PartiesFileError(f"{path}: not valid TOML ({exc})") from None
        protocol, transport, parties = (_table(data, name, path) for name in ("protocol", "transport", "parties"))
        unknown = sorted(set(parties) - set(PARTIES))
        if unknown:
            raise PartiesFileError(f"{path}: unknown party {unknown[0]!r} (parties are {', '.join(PARTIES)})")
        addresses, keys = {}, {}
        for party in PARTIES:
            if party not in parties:
                raise PartiesFileError(f"{path}: no [parties.{party}] table")
            entry = _table(parties, party, path, f"parties.{party}")
            if "public_key" not in entry:
                raise PartiesFileError(f"{path}: [parties.{party}] has no public_key")
            if not isinstance(entry["public_key"], str) or not entry["public_key"]:
                raise PartiesFileError(f"{path}: [parties.{party}] public_key is a file name in quotes, got "
                                       f"{entry['public_key']!r}")
            keys[party] = (path.parent / entry["public_key"]).resolve()
            if "address" in entry:
                try:
                    link_endpoint(entry["address"], party)            # tcp://HOST:PORT, checked now
                except (ValueError, TypeError, AttributeError):
                    raise PartiesFileError(f"{path}: [parties.{party}] address must be \"tcp://HOST:PORT\", got "
                                           f"{entry['address']!r}") from None
                addresses[party] = entry["address"]
            elif any(binds(party, p) for p in peers_of(party)):
                raise PartiesFileError(f"{path}: [parties.{party}] needs an address (tcp://HOST:PORT): "
                                       f"other parties connect to it")
        try:
            config = Config(frac_bits=_number(protocol, "frac_bits", 16, int, path, "protocol"),
                            compare_bits=_number(protocol, "compare_bits", 36, int, path, "protocol"))
        except ValueError as exc:
            if isinstance(exc, PartiesFileError):
                raise
            raise PartiesFileError(f"{path}: [protocol] {exc}") from None
        model = protocol.get("model") or None
        if model is not None and not isinstance(model, str):
            raise PartiesFileError(f"{path}: [protocol] model is a fingerprint in quotes (\"sha256:...\"), got {model!r}")
        encrypt = transport.get("encrypt", True)
        if not isinstance(encrypt, bool):
            raise PartiesFileError(f"{path}: [transport] encrypt is true or false, got {encrypt!r}")
        timing = {name: _number(transport, name, default, float, path, "transport")
                  for name, default in (("connect_timeout", 30.0), ("message_timeout", 600.0), ("heartbeat", 2.0))}
        max_message = _number(transport, "max_message_mb", MAX_MESSAGE / 2**20, float, path, "transport")
        return cls(path, addresses, keys, config, model, encrypt, timing["connect_timeout"],
                   timing["message_timeout"], timing["heartbeat"], int(max_message * 2**20))

    def directory(self) -> PartyDirectory:
        keys = {}
        if self.encrypt:
            try:
                keys = {p: load_public(f) for p, f in self.public_key_files.items()}
            except KeyFileError as exc:
                raise PartiesFileError(f"{self.path}: {exc}") from None
        return PartyDirectory(self.addresses, keys, self.encrypt, self.heartbeat, max_message=self.max_message)

    def secret_key_file(self, role: str, given: str | Path | None = None) -> Path:
        """The role's secret key: `given`, or <role>.key_secret beside its public key."""
        return Path(given) if given else self.public_key_files[role].with_name(f"{role}.key_secret")

    def transport(self, role: str, secret_key: str | Path | None = None) -> Transport:
        secret = public = None
        if self.encrypt:
            try:
                pair = load_pair(self.secret_key_file(role, secret_key))
            except KeyFileError as exc:
                raise PartiesFileError(str(exc)) from None
            secret, public = pair.secret, pair.public
        return Transport(role, self.directory(), secret, public)


def _table(data: dict, name: str, path: Path, label: str | None = None) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise PartiesFileError(f"{path}: [{label or name}] must be a table, got {value!r}")
    return value


def _number(table: dict, name: str, default, kind, path: Path, section: str):
    """A positive number setting (an int where `kind` is int): a one-line error otherwise."""
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        what = "a whole number" if kind is int else "a number"
        raise PartiesFileError(f"{path}: [{section}] {name} must be {what}, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise PartiesFileError(f"{path}: [{section}] {name} must be positive, got {value!r}")
    return kind(value)
