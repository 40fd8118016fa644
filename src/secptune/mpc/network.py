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
`PeerFailed` naming the peer instead of hanging.  Anyone who reaches a listening port can
open connections there, so a listener's link state follows its authenticated connection only
(`Transport._on_listener_event`): a disconnection on the port is the peer's only once the
peer's routing id is gone (`Transport._probe`); refused keys and garbage are logged, and a
listed peer's malformed message fails the session waiting on it, never this thread.

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
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .comm import NOTHING, PARTIES, Channel, PeerFailed, PeerTimeout
from .wire import WireError, check_nesting, from_tree, to_tree

log = logging.getLogger("secptune.network")

BIND_ORDER = ("server0", "server1", "dealer", "developer", "owner")
LINKS = {frozenset(p) for p in [("server0", "server1"), ("server0", "dealer"), ("server1", "dealer"),
                                 ("server0", "owner"), ("server1", "owner"), ("server0", "developer"),
                                 ("server1", "developer"), ("owner", "developer")]}
#: ZeroMQ's heartbeat: ping interval (s); a connection silent for HEARTBEAT_MISSES intervals
#: is closed (generous: a loaded 2-core machine can delay a pong by seconds)
HEARTBEAT = 2.0
HEARTBEAT_MISSES = 5
#: the largest message frame (bytes) a party accepts; libzmq closes a connection that sends a
#: larger one (a tensor's shares are one frame: MiniLM's word table is 94 MB, RoBERTa-large's 411 MB)
MAX_MESSAGE = 1 << 30
#: s an accepted connection may take to authenticate before the listener drops it
HANDSHAKE_TIMEOUT = 10.0
#: a listener's queue of TCP connections not yet accepted (the kernel refuses more)
BACKLOG = 32
#: messages queued per link in libzmq before a sender waits (0 would be unbounded)
HIGH_WATER_MARK = 10_000
#: s after an unexplained disconnection on a listening link at which the peer's
#: connection is probed (see `Transport._probe`)
PROBE_AFTER = (0.1, 0.5, 1.5, 4.0)
#: the kind of the marker a malformed message leaves in its peer's inbox
MALFORMED = "malformed"


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
    listening: bool = False
    up: bool = False
    ever_up: bool = False
    disconnects: int = 0
    #: connecting side: why the listener refused us (fails `wait_connected` at once);
    #: listening side: the last refused connection, a hint only (anyone can make one)
    auth_failure: str | None = None
    inconclusive: int = 0                 # handshakes that failed without saying why, in a row
    probes: list = field(default_factory=list)   # monotonic times of pending probes


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
    max_message: int = MAX_MESSAGE


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
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.MAXMSGSIZE, self.directory.max_message)
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
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer fails: `_probe` relies on it
            # anyone who can reach the port can open connections: each gets HANDSHAKE_TIMEOUT
            # s to authenticate, and the kernel queues at most BACKLOG not yet accepted
            sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_TIMEOUT * 1000))
            sock.setsockopt(zmq.BACKLOG, BACKLOG)
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
        self.links[peer] = LinkState(endpoint, listening)

    def _note_refused(self, domain: str, key: bytes, claimed_as: str | None) -> None:
        # anyone can make such a connection: it is logged and kept as a hint for a
        # `wait_connected` that times out, never a failure of the link
        with self._cv:
            who = f"{claimed_as}'s key" if claimed_as else "a key that is not in parties.toml"
            state = self.links.get(domain)
            if state is not None:
                state.auth_failure = (f"{self.name} refused a connection on {domain}'s link ({state.endpoint}) "
                                      f"made with {who} ({key.decode()[:10]}...)")
                log.warning(state.auth_failure)

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
                pending = any(self._outbox.values()) or any(s.probes for s in self.links.values())
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
                self._probe()
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
            if state.listening:
                self._on_listener_event(peer, state, kind)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                state.up = state.ever_up = True
                state.auth_failure = None
                state.inconclusive = 0
            elif kind == zmq.EVENT_DISCONNECTED:
                # a connecting socket has one connection, ours: its loss is the peer's
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
                state.auth_failure = state.auth_failure or (
                    f"{peer} at {state.endpoint} refused {self.name} ({reason}): either {self.name}'s secret "
                    f"key is not the one whose public key {peer} has in parties.toml, or {peer}'s public key "
                    f"in parties.toml is not {peer}'s")
            self._cv.notify_all()

    def _on_listener_event(self, peer: str, state: LinkState, kind: int) -> None:
        """A listening socket's events.  Anyone who reaches the port makes connections here,
        and libzmq's events do not say which connection they are about (a handshake's success
        carries no descriptor), so only what an outsider cannot cause changes the link: a
        successful handshake (with CURVE, the ZAP handler admits only `peer`'s key), and the
        ROUTER losing `peer`'s routing id (a connection gets it only once authenticated),
        which `_probe` checks after any disconnection."""
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if state.up:
                # the peer connected again: its previous connection, and what was in flight
                # on it, is gone (a live peer's socket never opens a second one)
                state.disconnects += 1
            state.up = state.ever_up = True
            state.probes = []
        elif kind == zmq.EVENT_DISCONNECTED:
            if state.up:
                now = time.monotonic()
                state.probes = [now + t for t in PROBE_AFTER]
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            pass                                        # _note_refused logged it with the key
        else:
            log.info("%s: an unauthenticated connection on %s's link (%s) failed its handshake", self.name, peer,
                     state.endpoint)

    def _probe(self) -> None:
        """Whether each listening link whose peer may have gone still routes to it: with
        ROUTER_MANDATORY a send to a routing id that has no connection fails at once
        (EHOSTUNREACH); otherwise the peer gets one empty frame, which it ignores.  A gone
        peer's routing id goes within milliseconds of its disconnection, hence probes at
        PROBE_AFTER s, not one."""
        now = time.monotonic()
        for peer, state in self.links.items():
            if not state.probes or state.probes[0] > now:
                continue
            state.probes.pop(0)
            try:
                self._sockets[peer].send_multipart([peer.encode(), b""], zmq.NOBLOCK)
            except zmq.Again:
                continue                                # a full queue: a live peer, or one going
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                with self._cv:
                    state.up = False
                    state.disconnects += 1
                    state.probes = []
                    self._cv.notify_all()
                log.info("%s: lost the connection to %s", self.name, peer)

    def _receive(self, peer: str, sock: zmq.Socket) -> None:
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            listening = binds(self.name, peer)
            if listening:
                routing, parts = parts[0], parts[1:]
                if routing.bytes != peer.encode():
                    log.warning("%s: dropped a message on %s's link from routing id %r", self.name, peer,
                                routing.bytes[:40])
                    continue
                # the ZAP handler's verdict travels with each message (the connecting side
                # knows its peer already: CURVE fails unless the listener holds the key)
                if self.encrypt and parts and parts[0].get("User-Id") != peer:
                    log.warning("%s: dropped a message on %s's link authenticated as %r", self.name, peer,
                                parts[0].get("User-Id"))
                    continue
            elif len(parts) == 1 and not len(parts[0].buffer):
                continue                                 # the listener's probe (`_probe`)
            if not parts:
                continue
            try:
                message = parse_envelope(parts)
            except Exception as exc:  # noqa: BLE001 - whatever a peer sends, this thread carries on
                # a listed peer sent it: the session waiting on that peer fails with the reason
                reason = f"{self.name}: a malformed message from {peer} ({str(exc)[:200] or type(exc).__name__})"
                log.warning(reason)
                message = Message("", MALFORMED, reason, [])
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
        sizes = [len(envelope)] + [memoryview(b).nbytes for b in buffers]
        if max(sizes) > self.directory.max_message:
            # the peer's libzmq would close the connection on it: fail here, naming the cause
            raise WireError(f"{self.name}: a message frame of {max(sizes)} bytes for {peer} exceeds max_message "
                            f"({self.directory.max_message} bytes, parties.toml [transport])")
        nbytes = sum(sizes)
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
                    state = self.links[peer]
                    if state.auth_failure and not state.up and not state.listening:
                        raise AuthenticationRefused(f"{self.name}: {state.auth_failure}")
                missing = [p for p in peers if not self.links[p].up]
                if not missing:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    where = ", ".join(f"{p} ({'expected to connect to' if binds(self.name, p) else 'at'} "
                                      f"{self.links[p].endpoint})" for p in missing)
                    hints = "".join(f"; {self.links[p].auth_failure}" for p in missing
                                    if self.links[p].listening and self.links[p].auth_failure)
                    raise PeerTimeout(f"{self.name}: {'these peers' if len(missing) > 1 else 'peer'} never "
                                      f"connected within {timeout:.0f} s: {where}{hints}")
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
                    if message.kind == MALFORMED:        # unreadable: it fails whichever session waits
                        del box[i]
                        raise PeerFailed(message.header)
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

    def start_session(self, session: str) -> None:
        """A session starts with clean inboxes: messages of other sessions (a dead one's
        leftovers) and unreadable ones go; a "begin" stays (the next session's start)."""
        with self._cv:
            for box in self._inbox.values():
                kept = [m for m in box if m.session == session or m.kind == "begin"]
                box.clear()
                box.extend(kept)

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


def parse_envelope(parts: list) -> Message:
    """A received message's envelope (session, kind, header tree) and frames; raises
    `WireError` for anything else (oversized frames never get here: MAXMSGSIZE)."""
    try:
        envelope = json.loads(parts[0].bytes)
    except (ValueError, RecursionError) as exc:       # RecursionError: nesting beyond the C scanner's
        raise WireError(f"an envelope that is not JSON ({type(exc).__name__})") from None
    if not isinstance(envelope, dict) or not {"s", "k", "h"} <= set(envelope):
        raise WireError("an envelope without session, kind and header")
    if not isinstance(envelope["s"], str) or not isinstance(envelope["k"], str):
        raise WireError("an envelope whose session or kind is not a string")
    check_nesting(envelope["h"])
    return Message(envelope["s"], envelope["k"], envelope["h"], parts[1:])


def decode_message(message: Message):
    try:
        return from_tree(message.header, message.frames)
    except WireError as exc:
        raise PeerFailed(f"a malformed message ({exc})") from None


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
        transport.start_session(session)
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

    def _poll(self, peer: str):
        try:
            message = self._next(peer, timeout=0.0)
        except PeerFailed:
            raise
        except PeerTimeout:
            return NOTHING
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
