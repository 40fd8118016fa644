"""A session's start between parties on separate hosts: the "begin" that opens it, the hello
every pair of parties exchanges (software version, wire format, protocol settings, model
fingerprint, use of fixed test seeds) and its check, and the end of a failed session."""

from __future__ import annotations

import math
import sys
import time

from .. import __version__
from ..mpc.comm import PeerFailed, PeerTimeout
from ..mpc.network import AuthenticationRefused, NetworkChannel, Transport, decode_message
from ..mpc.prg import SEED_BYTES
from .file import Parties

#: the wire format and session protocol's version (the hello compares it)
WIRE_VERSION = 1


class HandshakeRefused(ConnectionError):
    """A party refused the session: a setting differs between two parties."""


def hello(party: str, parties: Parties, model: str | None, test_seeds: bool) -> dict:
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


def handshake(channel: NetworkChannel, me: str, mine: dict, to, from_) -> dict[str, dict]:
    """Send our hello to the peers `to`, check those of the peers `from_`; returns theirs."""
    for peer in to:
        channel.send_control(peer, "hello", mine)
    theirs = {}
    for peer in from_:
        _, theirs[peer] = channel.recv_control(peer, expect="hello")
        check_hello(me, mine, peer, theirs[peer])
    return theirs


def requested_test_seed(begin: dict, allowed: bool, me: str) -> bytes | None:
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


def log(role: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {role}] {message}", file=sys.stderr, flush=True)


def wait_begin(transport: Transport, peer: str):
    """The next "begin" from `peer` (messages left from a dead session are discarded)."""
    while True:
        message = transport.receive(peer, None, math.inf)
        if message.kind == "begin":
            return message.session, decode_message(message)


def run_session(role: str, channel: NetworkChannel, body) -> bool:
    """Run one session's body; on failure tell the peers why, log it; True if it completed."""
    try:
        body()
        return True
    except (PeerFailed, PeerTimeout, HandshakeRefused, AuthenticationRefused, ValueError, RuntimeError) as exc:
        log(role, f"session {channel.session} ended: {exc}")
        channel.abort(str(exc))
        return False
