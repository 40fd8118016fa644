"""Parties on separate hosts: the parties file, the session handshake, each role's serve loop,
and the data owner's `RemoteSession`.

Roles and processes (each its own `secptune serve --role ...`, the owner `secptune tune
--parties ...`):

- server0, server1: long-running; each session they receive the model from the developer
  and run the operations the owner asks for (`session.SERVER_OPS`), reporting each one's cost;
- dealer: long-running; each session it draws two fresh seeds and sends each server its
  own, then answers server 1's requests for correlated randomness;
- developer: long-running, holds the weights in the clear; each session it runs its
  calibration for the owner's public settings, sends the owner the public model card
  (architecture, tokenizer files, embedding scale, fingerprint) and the servers the model's
  public settings and the weights' shares; it never sends a weight in the clear;
- owner: one process per tuning run; it starts the session.

A session (one owner run) begins when the owner sends server 0, server 1 and the developer
"begin"; the servers pass it on to the dealer.  Every pair of parties in the session then
exchanges a hello (software version, wire format, protocol settings, model fingerprint,
whether fixed test seeds are in use) and refuses a mismatch with a message saying which
setting differs, at both ends.  Seeds are agreed pairwise over the encrypted links, never
from a global master: the dealer sends each server its dealer seed, the owner and the
developer each send server 0 their input seed.  (`test_seed`, for the bit-identity test
only, derives them all from one seed the owner chooses, as `LocalSession(seed=...)` does; a
party accepts it only when started with `--insecure-test-seeds`.)

Any failure ends the session at every party: the failing party tells its peers why
("abort"), a lost connection is noticed by the transport, and the serve loops go back to
waiting for the next session.  The owner's tuning run checkpoints every generation, so a run
whose servers died resumes (`--resume`) in a new session.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .comm import DEALER, DEVELOPER, OWNER, PARTIES, SERVERS, Cost, PeerFailed, PeerTimeout
from .keys import KeyError_, load_pair, load_public
from .network import (MAX_MESSAGE, AuthenticationRefused, NetworkChannel, PartyDirectory, Transport, binds,
                      link_endpoint, peers_of)
from .party import Config, Owner
from .prg import SEED_BYTES, derive_seed, new_seed

#: the wire format and session protocol's version (the hello compares it)
WIRE_VERSION = 1


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
            except KeyError_ as exc:
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
            except KeyError_ as exc:
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


# -- the hello ------------------------------------------------------------------------------

def hello(party: str, parties: Parties, model: str | None, test_seeds: bool) -> dict:
    from .. import __version__

    return {"party": party, "version": __version__, "wire": WIRE_VERSION, "frac_bits": parties.config.frac_bits,
            "compare_bits": parties.config.compare_bits, "encrypt": parties.encrypt, "model": model,
            "test_seeds": test_seeds}


_HELLO_FIELDS = (("version", "secptune version"), ("wire", "wire format version"),
                 ("frac_bits", "protocol setting frac_bits"), ("compare_bits", "protocol setting compare_bits"),
                 ("encrypt", "transport setting encrypt"), ("test_seeds", "use of fixed test seeds"))


def check_hello(me: str, mine: dict, peer: str, theirs) -> None:
    """Raise `HandshakeRefused` saying which setting differs between `me` and `peer`."""
    if not isinstance(theirs, dict) or theirs.get("party") != peer:
        raise HandshakeRefused(f"{me} refuses {peer}: a malformed hello")
    for key, label in _HELLO_FIELDS:
        if mine.get(key) != theirs.get(key):
            raise HandshakeRefused(f"{me} refuses {peer}: {label} differs: {mine.get(key)!r} at {me}, "
                                   f"{theirs.get(key)!r} at {peer}")
    if mine.get("model") and theirs.get("model") and mine["model"] != theirs["model"]:
        raise HandshakeRefused(f"{me} refuses {peer}: model fingerprint differs: {mine['model']} at {me}, "
                               f"{theirs['model']} at {peer}")


def _handshake(channel: NetworkChannel, me: str, mine: dict, to, from_) -> dict[str, dict]:
    """Send our hello to the peers `to`, check those of the peers `from_`; returns theirs."""
    for peer in to:
        channel.send_control(peer, "hello", mine)
    theirs = {}
    for peer in from_:
        _, theirs[peer] = channel.recv_control(peer, expect="hello")
        check_hello(me, mine, peer, theirs[peer])
    return theirs


def _test_seed(begin: dict, allowed: bool, me: str) -> bytes | None:
    seed = begin.get("test_seed")
    if seed is None:
        return None
    if not allowed:
        raise HandshakeRefused(f"{me} refuses the session: the owner asked for fixed test seeds (insecure: the "
                               f"owner would know every party's seeds) and {me} was not started with "
                               f"--insecure-test-seeds")
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise HandshakeRefused(f"{me} refuses the session: a malformed test seed")
    return seed


def _log(role: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {role}] {message}", file=sys.stderr, flush=True)


def _wait_begin(transport: Transport, peer: str):
    """The next "begin" from `peer` (messages left from a dead session are discarded)."""
    while True:
        message = transport.receive(peer, None, math.inf)
        if message.kind == "begin":
            from .network import decode_message

            return message.session, decode_message(message)


def _run_session(role: str, channel: NetworkChannel, body) -> bool:
    """Run one session's body; on failure tell the peers why, log it; True if it completed."""
    try:
        body()
        return True
    except (PeerFailed, PeerTimeout, HandshakeRefused, AuthenticationRefused, ValueError, RuntimeError) as exc:
        _log(role, f"session {channel.session} ended: {exc}")
        channel.abort(str(exc))
        return False


# -- servers --------------------------------------------------------------------------------

def serve_server(index: int, parties: Parties, transport: Transport, test_seeds: bool = False,
                 sessions: int | None = None) -> None:
    from . import protocols  # noqa: F401  (registers the dealer's correlations)
    from .. import models  # noqa: F401  (registers the scorer's server operations)
    from .party import Server
    from .session import run_server_op

    name, peer = SERVERS[index], SERVERS[1 - index]
    done = 0
    _log(name, f"listening ({'CURVE-encrypted' if parties.encrypt else 'UNENCRYPTED'}); waiting for the owner")
    while sessions is None or done < sessions:
        session, begin = _wait_begin(transport, OWNER)
        channel = NetworkChannel(transport, session, parties.message_timeout, watch=(peer, DEALER, OWNER, DEVELOPER))

        def body():
            mine = hello(name, parties, parties.model, bool(begin.get("test_seed")))
            check_hello(name, mine, OWNER, begin.get("hello"))
            seed = _test_seed(begin, test_seeds, name)
            transport.wait_connected([peer, DEALER, DEVELOPER], parties.connect_timeout)
            channel.send_control(DEALER, "begin", {"hello": mine, "test_seed": seed})
            _handshake(channel, name, mine, [peer, DEVELOPER], [peer, DEALER, DEVELOPER])
            channel.send_control(OWNER, "hello", mine)
            _, dealer_seed = channel.recv_control(DEALER, expect="seed")
            input_seeds = {OWNER: None, DEVELOPER: None}
            if index == 0:
                for party in (OWNER, DEVELOPER):
                    _, input_seeds[party] = channel.recv_control(party, expect="seed")
            server = Server(index, channel, dealer_seed, input_seeds, parties.config)
            _log(name, f"session {session} started")
            while True:
                kind, request = channel.recv_control(OWNER, timeout=math.inf)
                if kind == "end":
                    server.stop_dealer()
                    _log(name, f"session {session} ended by the owner")
                    return
                if kind != "call":
                    raise PeerFailed(f"{name}: unexpected {kind!r} from the owner")
                cost, labels = run_server_op(server, request["op"], request["params"])
                channel.send_control(OWNER, "done", {"cost": cost.as_dict(),
                                                     "labels": {k: v.as_dict() for k, v in labels.items()}})

        _run_session(name, channel, body)
        done += 1


# -- dealer ---------------------------------------------------------------------------------

def serve_dealer(parties: Parties, transport: Transport, test_seeds: bool = False, sessions: int | None = None) -> None:
    from . import protocols  # noqa: F401  (registers the correlations)
    from .dealer import Dealer

    done = 0
    _log(DEALER, "connecting to the servers; waiting for a session")
    while sessions is None or done < sessions:
        session, begin1 = _wait_begin(transport, SERVERS[1])
        channel = NetworkChannel(transport, session, parties.message_timeout, watch=SERVERS)

        def body():
            _, begin0 = channel.recv_control(SERVERS[0], expect="begin")
            mine = hello(DEALER, parties, parties.model, begin1.get("test_seed") is not None)
            for server, begin in zip(SERVERS, (begin0, begin1)):
                check_hello(DEALER, mine, server, begin.get("hello"))
            if begin0.get("test_seed") != begin1.get("test_seed"):
                raise HandshakeRefused("dealer refuses the session: the servers sent different test seeds")
            master = _test_seed(begin1, test_seeds, DEALER)
            for server in SERVERS:
                channel.send_control(server, "hello", mine)
            if master is not None:
                seeds = (derive_seed(master, "dealer0"), derive_seed(master, "dealer1"))
            else:
                seeds = (new_seed(), new_seed())
            for server, seed in zip(SERVERS, seeds):
                channel.send_control(server, "seed", seed)
            channel.timeout = math.inf           # idle between requests is normal; a lost server is not
            _log(DEALER, f"session {session} started")
            Dealer(seeds, channel).serve()
            _log(DEALER, f"session {session} ended")

        _run_session(DEALER, channel, body)
        done += 1


# -- developer ------------------------------------------------------------------------------

@dataclass
class DeveloperModel:
    folder: Path
    config: object
    weights: object
    attention: object
    tokenizer: object
    fingerprint: str


def load_developer_model(model: str, attention: str) -> DeveloperModel:
    from ..models.deployment import fingerprint
    from ..tuning.job import TuneJob, load_job_model

    job = TuneJob(model=model, attention=attention)
    folder, config, weights, settings, tokenizer = load_job_model(job)
    return DeveloperModel(folder, config, weights, settings, tokenizer, fingerprint(config, weights, settings))


def developer_calibration_for(model: DeveloperModel, request: dict):
    """The developer's calibration (`tuning.job.developer_calibration`) for the owner's public
    settings: its own texts, prompts drawn from the prompt space's distribution."""
    from ..models import MaskedLMTask, SentenceTask
    from ..tuning.job import TuneJob, developer_calibration
    from ..models.weights import prompt_scales
    from ..tuning.prompt import space_for

    job = TuneJob(task=request["task"] or "", data="owner's file" if request["task"] is None else None,
                  max_length=int(request["max_length"]), bound=float(request["bound"]),
                  prompt_placement=request.get("prompt_placement", "insert"))
    space = space_for(int(request["dim"]), int(request["prompt_length"]), model.config.hidden_size,
                      prompt_scales(model.weights), float(request["sigma0"]), request["projection"], 0,
                      request.get("prompt_depth", "input"), model.config.num_layers)
    head = request["head"]
    kind = head["kind"] if head["kind"] != "auto" else ("mlm" if model.config.has_lm_head else "similarity")
    task = MaskedLMTask(head["verbalizers"], head["template"]) if kind == "mlm" else SentenceTask([])
    return developer_calibration(job, model.config, model.weights, model.attention, model.tokenizer, task, space)


def serve_developer(parties: Parties, transport: Transport, model: DeveloperModel, test_seeds: bool = False,
                    sessions: int | None = None) -> None:
    from ..models.deployment import ModelCard, developer_deploy
    from .party import Developer

    if parties.model and parties.model != model.fingerprint:
        _log(DEVELOPER, f"warning: this model's fingerprint {model.fingerprint} is not the one in "
                        f"{parties.path} ({parties.model}): sessions will be refused")
    calibrations: dict[str, object] = {}
    done = 0
    _log(DEVELOPER, f"serving {model.folder} ({model.attention.kind} attention, {model.fingerprint[:19]}...); "
                    f"waiting for the owner")
    while sessions is None or done < sessions:
        session, begin = _wait_begin(transport, OWNER)
        channel = NetworkChannel(transport, session, parties.message_timeout, watch=(*SERVERS, OWNER))

        def body():
            mine = hello(DEVELOPER, parties, model.fingerprint, bool(begin.get("test_seed")))
            check_hello(DEVELOPER, mine, OWNER, begin.get("hello"))
            master = _test_seed(begin, test_seeds, DEVELOPER)
            transport.wait_connected(list(SERVERS), parties.connect_timeout)
            _handshake(channel, DEVELOPER, mine, SERVERS, SERVERS)
            channel.send_control(OWNER, "hello", mine)
            seed = derive_seed(master, "developer0") if master is not None else new_seed()
            channel.send_control(SERVERS[0], "seed", seed)
            developer = Developer(channel, seed, parties.config)
            _log(DEVELOPER, f"session {session} started")
            while True:
                kind, request = channel.recv_control(OWNER, timeout=math.inf)
                if kind == "end":
                    _log(DEVELOPER, f"session {session} ended by the owner")
                    return
                if kind != "deploy":
                    raise PeerFailed(f"{DEVELOPER}: unexpected {kind!r} from the owner")
                calibration = None
                if request.get("calibrate", True):
                    key = json.dumps(request, sort_keys=True)
                    if key not in calibrations:
                        _log(DEVELOPER, "calibrating for the owner's settings")
                        calibrations[key] = developer_calibration_for(model, request)
                    calibration = calibrations[key]
                card = ModelCard.of(model.folder, model.config, model.weights, model.attention,
                                    public_words=request.get("embedding") == "public",
                                    model_fingerprint=model.fingerprint)
                channel.send_control(OWNER, "card", {"card": card.to_wire(),
                                                     "calibration": calibration.ranges if calibration else None})
                developer_deploy(developer, model.config, model.weights, model.attention, calibration)
                _log(DEVELOPER, "deployed the model to the servers")

        _run_session(DEVELOPER, channel, body)
        done += 1


# -- the data owner -------------------------------------------------------------------------

class RemoteSession:
    """The data owner's session with servers, dealer and developer on other hosts: the same
    interface a `SecureScorer` uses on a `LocalSession` (`owner`, `config`, `call`), plus
    `request_model`, the developer's deployment for the owner's public settings.

    `test_seed` (INSECURE, tests only): derive every party's seeds from this one, as
    `LocalSession(seed=...)` does, so that a run is bit-identical to the in-process one."""

    def __init__(self, parties: Parties, secret_key: str | Path | None = None, test_seed: bytes | None = None,
                 record: bool = False, transport: Transport | None = None):
        self.parties = parties
        self.config = parties.config
        self.transport = transport or parties.transport(OWNER, secret_key)
        self._closed = False
        try:
            self._begin(test_seed, record)
        except BaseException:
            self.transport.close()
            self._closed = True
            raise

    def _begin(self, test_seed, record) -> None:
        p = self.parties
        partners = (*SERVERS, DEVELOPER)
        self.transport.wait_connected(list(partners), p.connect_timeout)
        self.session_id = secrets.token_hex(8)
        self.channel = NetworkChannel(self.transport, self.session_id, p.message_timeout, record, watch=partners)
        mine = hello(OWNER, p, p.model, test_seed is not None)
        for party in partners:
            self.channel.send_control(party, "begin", {"hello": mine, "test_seed": test_seed})
        try:
            self.hellos = {party: self.channel.recv_control(party, expect="hello")[1] for party in partners}
            for party, theirs in self.hellos.items():
                check_hello(OWNER, mine, party, theirs)
        except HandshakeRefused as exc:
            self.channel.abort(str(exc))
            raise
        self.model_fingerprint = self.hellos[DEVELOPER]["model"]
        seed = derive_seed(test_seed, "owner0") if test_seed is not None else new_seed()
        self.channel.send_control(SERVERS[0], "seed", seed)
        self.owner = Owner(self.channel, seed, self.config)

    def request_model(self, request: dict):
        """Ask the developer to calibrate for `request` (the owner's public settings) and
        deploy; returns (ModelCard, calibrated ranges or None)."""
        from ..models.deployment import ModelCard

        self.channel.send_control(DEVELOPER, "deploy", request)
        _, reply = self.channel.recv_control(DEVELOPER, expect="card")
        return ModelCard.from_wire(reply["card"]), reply["calibration"]

    def call(self, op: str, params: dict, owner_work=None):
        """Run server operation `op` on both servers and `owner_work()` here (see
        `LocalSession.call`); the servers report each operation's costs."""
        for server in SERVERS:
            self.channel.send_control(server, "call", {"op": op, "params": params})
        out = owner_work() if owner_work is not None else None
        costs = {}
        for server in SERVERS:
            _, report = self.channel.recv_control(server, expect="done")
            costs[server] = (Cost(**report["cost"]), {k: Cost(**v) for k, v in report["labels"].items()})
        return out, costs

    def wire_bytes(self) -> dict:
        return {peer: dict(counts) for peer, counts in self.transport.wire_bytes.items()}

    def close(self, failure: BaseException | None = None) -> None:
        """End the session (after a failure: tell the other parties why)."""
        if self._closed:
            return
        self._closed = True
        if failure is not None:
            self.channel.abort(f"the owner failed: {failure}")
        else:
            for party in (*SERVERS, DEVELOPER):
                self.channel.send_control(party, "end")
        self.transport.close()       # hands what is queued over before the sockets close

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(exc)
        return False


def serve(role: str, parties: Parties, secret_key: str | Path | None = None, test_seeds: bool = False,
          sessions: int | None = None, model: str = "minilm", attention: str = "rfa") -> None:
    """`secptune serve`: run `role` until interrupted (or for `sessions` sessions)."""
    if role not in (*SERVERS, DEALER, DEVELOPER):
        raise ValueError(f"--role must be server0, server1, dealer or developer, got {role!r}")
    developer_model = load_developer_model(model, attention) if role == DEVELOPER else None
    with parties.transport(role, secret_key) as transport:
        if role in SERVERS:
            serve_server(SERVERS.index(role), parties, transport, test_seeds, sessions)
        elif role == DEALER:
            serve_dealer(parties, transport, test_seeds, sessions)
        else:
            serve_developer(parties, transport, developer_model, test_seeds, sessions)
