"""The network communicator: parties on separate hosts, over ZeroMQ with CURVE.

Why ZeroMQ + CURVE (pyzmq): messages are multipart, so a tensor's buffer goes out as its own
frame straight from the tensor's memory (no pickling; pyzmq copies frames under 64 KB, larger
ones are handed to libzmq without a copy; the receiver makes one copy into a writable tensor,
as libzmq's received buffers are read-only); CURVE
(CurveZMQ: Curve25519 key exchange, XSalsa20-Poly1305 per message, perfect forward
secrecy) encrypts and authenticates every connection with a key pair per party and no
certificate authority to run; the ZAP handler checks that a connecting party's public key is
the one parties.toml lists for that party.  gRPC with TLS would need a CA (or pinned
self-signed certificates) and protobuf-wrapped byte fields.

Topology: one connection per pair of parties that talk (`LINKS`); the party earlier in
`BIND_ORDER` binds (a ROUTER socket on its address's port + the peer's index in `PARTIES`)
and the later one connects (a DEALER whose routing id is its name).  So server 0 listens for
server 1, the dealer, the owner and the developer, server 1 for the dealer, the owner and the
developer, the developer for the owner; the dealer and the owner only connect out.

Authentication is mutual: a connecting party must know the listener's public key (CURVE's
handshake fails otherwise), and the listener's ZAP handler accepts only the public key of
the party that link belongs to, and checks every message's authenticated User-Id.

One I/O thread per process owns every socket (ZeroMQ sockets are not thread-safe): the
party's thread hands it outgoing messages through an inproc socket (zero-copy) and waits on
per-peer inboxes.  Liveness: ZeroMQ heartbeats (ZMTP PING, every `heartbeat` s, any
traffic counts, so a long transfer is not mistaken for silence) close a connection whose
peer fell silent, and a socket monitor reports every disconnection, so a party waiting on a
peer that died learns it at once when the kernel closes the dead process's sockets, or within
`heartbeat * HEARTBEAT_MISSES` s (10 s by default) when its host falls silent, and fails with
`PeerFailed` naming the peer instead of hanging.

Messages carry a session id: after a peer restarts, anything left over from the old
session is set aside, never read as the new session's.  Every message's bytes on the wire (header and frames,
before CURVE's 16-byte MAC and framing per frame) are counted per peer (`wire_bytes`).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from .comm import PARTIES, Channel, PeerFailed, PeerTimeout
from .wire import from_tree, to_tree

log = logging.getLogger("secptune.network")

BIND_ORDER = ("server0", "server1", "dealer", "developer", "owner")
LINKS = {frozenset(p) for p in [("server0", "server1"), ("server0", "dealer"), ("server1", "dealer"),
                                 ("server0", "owner"), ("server1", "owner"), ("server0", "developer"),
                                 ("server1", "developer"), ("owner", "developer")]}
#: ZeroMQ's heartbeat: ping interval (s); a connection silent for HEARTBEAT_MISSES intervals
#: is closed (generous: a loaded 2-core machine can delay a pong by seconds)
HEARTBEAT = 2.0
HEARTBEAT_MISSES = 5


class AuthenticationRefused(ConnectionError):
    """A connection failed CURVE authentication (a wrong or unknown key)."""


def peers_of(name: str) -> list[str]:
    return [p for p in PARTIES if frozenset((name, p)) in LINKS]


def binds(name: str, peer: str) -> bool:
    """Whether `name` listens for `peer` (else it connects to `peer`)."""
    return BIND_ORDER.index(name) < BIND_ORDER.index(peer)


def link_endpoint(address: str, peer: str) -> str:
    """The endpoint a party at `address` (tcp://host:port) listens on for `peer`."""
    url = urlparse(address)
    if url.scheme != "tcp" or not url.hostname or url.port is None:
        raise ValueError(f"an address is tcp://HOST:PORT, got {address!r}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"tcp://{host}:{url.port + PARTIES.index(peer)}"


@dataclass
class LinkState:
    endpoint: str
    up: bool = False
    ever_up: bool = False
    disconnects: int = 0
    auth_failure: str | None = None
    inconclusive: int = 0                 # handshakes that failed without saying why, in a row


@dataclass
class Message:
    session: str
    kind: str
    header: dict
    frames: list


@dataclass
class PartyDirectory:
    """What a transport needs to know of the parties: addresses and public keys (Z85)."""

    addresses: dict[str, str]
    public_keys: dict[str, bytes]
    encrypt: bool = True
    heartbeat: float = HEARTBEAT
    extra: dict = field(default_factory=dict)


class _PartyAuthenticator(ThreadAuthenticator):
    """ZAP: accept exactly the parties' listed public keys; the User-Id is the party's name."""

    def __init__(self, context, keys: dict[bytes, str], owner: "Transport"):
        super().__init__(context)
        self._keys = keys
        self._transport = owner

    def callback(self, domain, key: bytes) -> bool:
        if key in self._keys and self._keys[key] == domain:
            return True
        self._transport._note_refused(domain, key, self._keys.get(key))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        return self._keys[z85.encode(client_public_key)]


class Transport:
    """One party's encrypted connections to its peers (see the module docstring)."""

    def __init__(self, name: str, directory: PartyDirectory, secret_key: bytes | None, public_key: bytes | None):
        if name not in PARTIES:
            raise ValueError(f"unknown party {name!r}")
        if directory.encrypt and not zmq.has("curve"):
            raise RuntimeError("this libzmq has no CURVE support: cannot encrypt")
        self.name = name
        self.directory = directory
        self.encrypt = directory.encrypt
        self.context = zmq.Context()
        self._cv = threading.Condition()
        self._inbox: dict[str, collections.deque] = {p: collections.deque() for p in peers_of(name)}
        self.links: dict[str, LinkState] = {}
        self.wire_bytes = {p: {"sent": 0, "received": 0} for p in peers_of(name)}
        self._sockets: dict[str, zmq.Socket] = {}
        self._monitors: dict[zmq.Socket, str] = {}
        self._auth = None
        self._closed = False
        self._failure: str | None = None
        if self.encrypt and any(binds(name, p) for p in peers_of(name)):
            self._auth = _PartyAuthenticator(self.context, {k: p for p, k in directory.public_keys.items()}, self)
            self._auth.start()
            for peer in peers_of(name):
                if binds(name, peer):
                    self._auth.configure_curve_callback(peer, self._auth)   # ZAP domain = the link's peer
        for peer in peers_of(name):
            self._open_link(peer, secret_key, public_key)
        self._send_lock = threading.Lock()
        self._wake_endpoint = f"inproc://secptune-send-{id(self)}"
        self._wake = self.context.socket(zmq.PULL)
        self._wake.bind(self._wake_endpoint)
        self._outlet = self.context.socket(zmq.PUSH)
        self._outlet.connect(self._wake_endpoint)
        self._outbox: dict[str, collections.deque] = {p: collections.deque() for p in peers_of(name)}
        self._thread = threading.Thread(target=self._io_loop, name=f"{name}-io", daemon=True)
        self._thread.start()

    # -- setting up -------------------------------------------------------------------------

    def _open_link(self, peer: str, secret_key, public_key) -> None:
        listening = binds(self.name, peer)
        holder = self.name if listening else peer
        if holder not in self.directory.addresses:
            raise ValueError(f"parties.toml gives no address for {holder} (needed by {self.name} "
                             f"to {'listen for' if listening else 'reach'} {peer})")
        endpoint = link_endpoint(self.directory.addresses[holder], peer if listening else self.name)
        sock = self.context.socket(zmq.ROUTER if listening else zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(self.directory.heartbeat * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self.directory.heartbeat * 1000 * HEARTBEAT_MISSES))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(self.directory.heartbeat * 1000 * HEARTBEAT_MISSES))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.encrypt:
            sock.curve_secretkey = secret_key
            sock.curve_publickey = public_key
            if listening:
                sock.curve_server = True
                sock.zap_domain = peer.encode()       # the ZAP handler accepts only this peer's key
            else:
                sock.curve_serverkey = self.directory.public_keys[peer]
        if listening:
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a restarted peer takes its name back
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        else:
            sock.setsockopt(zmq.ROUTING_ID, self.name.encode())
            sock.setsockopt(zmq.IMMEDIATE, 1)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                          | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        try:
            if listening:
                sock.bind(endpoint)
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise OSError(f"{self.name}: cannot {'listen on' if listening else 'connect to'} {endpoint} for "
                          f"{peer}: {exc}") from None
        self._sockets[peer] = sock
        self._monitors[monitor] = peer
        self.links[peer] = LinkState(endpoint)

    def _note_refused(self, domain: str, key: bytes, claimed_as: str | None) -> None:
        with self._cv:
            who = f"{claimed_as}'s key" if claimed_as else "a key that is not in parties.toml"
            state = self.links.get(domain)
            if state is not None:
                state.auth_failure = (f"{self.name} refused a connection on {domain}'s link ({state.endpoint}) "
                                      f"made with {who} ({key.decode()[:10]}...)")
                log.warning(state.auth_failure)
            self._cv.notify_all()

    # -- the I/O thread ---------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake, zmq.POLLIN)
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        try:
            while not self._closed:
                pending = any(self._outbox.values())
                events = dict(poller.poll(20 if pending else 200))
                if self._wake in events:
                    while True:
                        try:
                            parts = self._wake.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        peer = parts[0].bytes.decode()
                        if peer == "":                        # close(): hand over what is queued
                            self._drain(poller)
                            return
                        self._outbox[peer].append(parts[1:])
                for monitor, peer in self._monitors.items():
                    if monitor in events:
                        self._on_event(peer, parse_monitor_message(monitor.recv_multipart()))
                for peer, sock in self._sockets.items():
                    if sock in events:
                        self._receive(peer, sock)
                for peer, box in self._outbox.items():
                    self._flush(peer, box)
        except zmq.ContextTerminated:
            return
        except BaseException as exc:           # a bug here must not leave the party waiting forever
            with self._cv:
                self._failure = f"{self.name}: the network thread failed: {exc!r}"
                self._cv.notify_all()
            raise

    def _drain(self, poller, seconds: float = 2.0) -> None:
        """Flush the outboxes to connected peers (a goodbye must not be lost on close)."""
        deadline = time.monotonic() + seconds
        while any(self._outbox.values()) and time.monotonic() < deadline:
            events = dict(poller.poll(20))
            for monitor, peer in self._monitors.items():
                if monitor in events:
                    self._on_event(peer, parse_monitor_message(monitor.recv_multipart()))
            for peer, box in self._outbox.items():
                self._flush(peer, box)

    def _on_event(self, peer: str, event: dict) -> None:
        kind = event["event"]
        with self._cv:
            state = self.links[peer]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                state.up = state.ever_up = True
                state.auth_failure = None
                state.inconclusive = 0
            elif kind == zmq.EVENT_DISCONNECTED:
                if state.up:
                    state.disconnects += 1
                state.up = False
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and state.inconclusive < 4:
                # the connection closed mid-handshake: a wrong key looks like this, and so does a
                # network blip or a relay whose far end is not up yet; conclude after 5 in a row
                state.inconclusive += 1
            else:
                reason = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its key was refused",
                          zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the CURVE handshake failed",
                          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the CURVE handshake failed"}[kind]
                if binds(self.name, peer):
                    msg = (f"a party connecting as {peer} to {state.endpoint} failed authentication ({reason}): "
                           f"its key is not {peer}'s key in parties.toml")
                else:
                    msg = (f"{peer} at {state.endpoint} refused {self.name} ({reason}): either {self.name}'s "
                           f"secret key is not the one whose public key {peer} has in parties.toml, or "
                           f"{peer}'s public key in parties.toml is not {peer}'s")
                state.auth_failure = state.auth_failure or msg
            self._cv.notify_all()

    def _receive(self, peer: str, sock: zmq.Socket) -> None:
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if binds(self.name, peer):
                routing, parts = parts[0], parts[1:]
                if routing.bytes != peer.encode():
                    log.warning("%s: dropped a message on %s's link from routing id %r", self.name, peer,
                                routing.bytes)
                    continue
                # the ZAP handler's verdict travels with each message (the connecting side
                # knows its peer already: CURVE fails unless the listener holds the key)
                if self.encrypt and parts and parts[0].get("User-Id") != peer:
                    log.warning("%s: dropped a message on %s's link authenticated as %r", self.name, peer,
                                parts[0].get("User-Id"))
                    continue
            if not parts:
                continue
            try:
                envelope = json.loads(parts[0].bytes)
                message = Message(str(envelope["s"]), str(envelope["k"]), envelope["h"], parts[1:])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: dropped a malformed message from %s (%s)", self.name, peer, exc)
                continue
            with self._cv:
                self.wire_bytes[peer]["received"] += sum(len(p.buffer) for p in parts)
                self._inbox[peer].append(message)
                self._cv.notify_all()

    def _flush(self, peer: str, box: collections.deque) -> None:
        sock = self._sockets[peer]
        listening = binds(self.name, peer)
        while box:
            if listening and not self.links[peer].up:
                return
            frames = ([peer.encode()] if listening else []) + list(box[0])
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:     # the peer's connection is not attached yet
                    return
                raise
            box.popleft()

    # -- the party's side -------------------------------------------------------------------

    def send(self, peer: str, session: str, kind: str, payload) -> int:
        """Queue a message; returns its bytes (header and buffers)."""
        if peer not in self._outbox:
            raise ValueError(f"{self.name} has no link to {peer}")
        tree, buffers = to_tree(payload)
        envelope = json.dumps({"s": session, "k": kind, "h": tree}, separators=(",", ":")).encode()
        nbytes = len(envelope) + sum(memoryview(b).nbytes for b in buffers)
        with self._send_lock:
            self._outlet.send_multipart([peer.encode(), envelope, *buffers], copy=False)
        with self._cv:
            self.wire_bytes[peer]["sent"] += nbytes
        return nbytes

    def wait_connected(self, peers, timeout: float) -> None:
        """Wait until every peer's connection is up (authenticated); a peer that is not
        raises `PeerTimeout` naming it, a refused key `AuthenticationRefused` at once."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for peer in peers:
                    if self.links[peer].auth_failure and not self.links[peer].up:
                        raise AuthenticationRefused(f"{self.name}: {self.links[peer].auth_failure}")
                missing = [p for p in peers if not self.links[p].up]
                if not missing:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    where = ", ".join(f"{p} ({'expected to connect to' if binds(self.name, p) else 'at'} "
                                      f"{self.links[p].endpoint})" for p in missing)
                    raise PeerTimeout(f"{self.name}: {'these peers' if len(missing) > 1 else 'peer'} never "
                                      f"connected within {timeout:.0f} s: {where}")
                self._cv.wait(min(remaining, 0.2))

    def receive(self, peer: str, session: str | None, timeout: float, watch=(), since=None) -> Message:
        """The next message from `peer` in `session` (None: the next from any session).  Raises `PeerFailed` if `peer` or a peer in `watch` disconnected after
        `since` (a {peer: disconnect count} snapshot), `PeerTimeout` after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                box = self._inbox[peer]
                if session is None and box:
                    return box.popleft()
                for i, message in enumerate(box):
                    # another session's messages stay: a session that is ending leaves the
                    # next one's "begin" for the serve loop
                    if message.session == session:
                        del box[i]
                        return message
                if self._failure:
                    raise PeerFailed(self._failure)
                for p in watch:                   # a watched peer that gave up ends the wait
                    for message in self._inbox[p]:
                        if message.kind == "abort" and message.session == session:
                            return message
                for p in (peer, *watch):
                    if since is not None and self.links[p].disconnects > since.get(p, 0):
                        raise PeerFailed(f"{self.name}: lost the connection to {p} (its process ended or "
                                         f"the network failed)")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerTimeout(f"{self.name}: no message from {peer} within {timeout:.0f} s")
                self._cv.wait(min(remaining, 0.5))

    def disconnects(self) -> dict[str, int]:
        with self._cv:
            return {p: s.disconnects for p, s in self.links.items()}

    def close(self) -> None:
        if self._closed:
            return
        with self._send_lock:
            self._outlet.send_multipart([b""])
        self._thread.join(timeout=5)
        self._closed = True
        if self._auth is not None:
            self._auth.stop()
        for monitor in self._monitors:
            monitor.close(linger=0)
        for sock in self._sockets.values():
            sock.disable_monitor()
            sock.close(linger=1000)              # libzmq's own queue: a second to deliver it
        self._wake.close(linger=0)
        self._outlet.close(linger=0)
        self.context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def decode_message(message: Message):
    return from_tree(message.header, message.frames)


class NetworkChannel(Channel):
    """A party's `Channel` for one session over a `Transport`.  Control messages (session
    set-up, commands, cost reports) go through `send_control`/`recv_control` and are not
    counted in the cost meter; data messages are counted as every channel counts them.
    A peer that reports a failure ("abort") makes every wait raise `PeerFailed` with its
    reason; `watch` are the peers whose disconnection ends the session."""

    def __init__(self, transport: Transport, session: str, timeout: float = 600.0, record: bool = False,
                 watch=()):
        super().__init__(transport.name, timeout, record)
        self.transport = transport
        self.session = session
        self.watch = tuple(watch)
        self.since = transport.disconnects()

    def _send(self, peer: str, payload) -> None:
        self.transport.send(peer, self.session, "data", payload)

    def _next(self, peer: str, timeout: float | None = None) -> Message:
        message = self.transport.receive(peer, self.session, self.timeout if timeout is None else timeout,
                                         self.watch, self.since)
        if message.kind == "abort":
            reason = decode_message(message)
            raise PeerFailed(f"{self.name}: the session was stopped: {reason}")
        return message

    def _recv(self, peer: str):
        message = self._next(peer)
        if message.kind != "data":
            raise PeerFailed(f"{self.name}: expected data from {peer}, got a {message.kind!r} message")
        return decode_message(message)

    def send_control(self, peer: str, kind: str, payload=None) -> None:
        self.transport.send(peer, self.session, kind, payload)

    def recv_control(self, peer: str, timeout: float | None = None, expect: str | None = None):
        message = self._next(peer, timeout)
        if expect is not None and message.kind != expect:
            raise PeerFailed(f"{self.name}: expected a {expect!r} message from {peer}, got {message.kind!r}")
        return message.kind, decode_message(message)

    def abort(self, reason: str) -> None:
        """Tell every peer of this session that this party failed (best effort)."""
        for peer in peers_of(self.name):
            try:
                self.transport.send(peer, self.session, "abort", reason)
            except Exception:  # noqa: BLE001 - a failing party still tells the others what it can
                pass
