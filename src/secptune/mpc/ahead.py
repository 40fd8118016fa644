"""The dealer ahead of the servers: a repeated operation's requests, known before they come.

Without it the dealer works on demand: server 1 asks for a correlation when its program
reaches it, and both servers wait while the dealer computes it.  In tuning the same secure
pass runs again and again (one per generation, on the same texts and shapes), and an MPC
program's requests of the dealer depend on its shapes, never on the data: the second run
asks for exactly what the first asked for, under shifted request numbers.  So the dealer
can compute request i + 1 while the servers still compute with request i, and a pass's wall
time approaches the larger of the dealer's and the servers' work instead of their sum.

Server 1 marks the start of each server operation with ("op", digest, first request): the
digest names the operation, its plan key (what its requests depend on: the shapes of the
texts it scores, not which texts) and how many state-changing operations came before it (an
operation that changes the servers' state, such as choosing another label set, may change
what a later call asks for; storing texts under a new handle does not, and is itself a
repeatable operation: so scoring a test set chunk by chunk, each chunk stored then scored,
is dealt ahead too).  Server 1 and the dealer both keep a
`ScheduleBook` of what each digest's last call asked for; they see the same requests, so
their books agree.  When an operation's last two calls asked for the same requests (a first
call may prepare what later calls reuse), the book holds a *plan* for its next call: the
same requests, renumbered.  The dealer then deals the plan's requests in order as fast as
it can, never holding more than `ahead_bytes` of dealt-but-not-yet-requested material, and
server 1 still sends each request, which tells the dealer how far the servers are.

Nothing else changes: each request is dealt from the same seeds under the same number, so
the servers receive the same messages, in the same order (only earlier); the dealer learns
a digest it could infer from the requests themselves.  Should a call ever ask for something
other than its plan, server 1 stops before using the material (`DealerAheadMismatch`), and
so does the dealer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque

#: default bound on the material the dealer has dealt ahead and the servers have not yet
#: asked for (bytes to both servers); larger requests are dealt on demand, as before
AHEAD_BYTES = 2 << 30


class DealerAheadMismatch(RuntimeError):
    """A repeated operation asked the dealer for other correlations than its last two calls."""


def op_digest(version: int, op: str, key) -> bytes:
    """The digest server 1 sends for an operation (16 bytes of SHA-256 of its description:
    its name and what its requests depend on, its plan key)."""
    text = repr((version, op, sorted(key.items()) if isinstance(key, dict) else key))
    return hashlib.sha256(text.encode()).digest()[:16]


def _renumber(value, first: int, relative: bool):
    """`value` (a request's parameters) with the request numbers it names that lie in the
    operation (>= first) written relative to its first request (as -(offset + 1)), or back.
    A request names another by its origin, (index, kind, parameters as sorted items), when it
    reuses that request's masks, and a fixed operand's mask by `mask_index`."""
    def index(i: int) -> int:
        if relative:
            return -(i - first) - 1 if i >= first else i
        return first - i - 1 if i < 0 else i

    if isinstance(value, dict):
        return {k: index(v) if k == "mask_index" and isinstance(v, int) else _renumber(v, first, relative)
                for k, v in value.items()}
    if isinstance(value, tuple):
        if len(value) == 3 and isinstance(value[0], int) and isinstance(value[1], str) and isinstance(value[2], tuple):
            return (index(value[0]), value[1], _renumber(value[2], first, relative))
        if len(value) == 2 and value[0] == "mask_index" and isinstance(value[1], int):
            return (value[0], index(value[1]))
        return tuple(_renumber(v, first, relative) for v in value)
    if isinstance(value, list):
        return [_renumber(v, first, relative) for v in value]
    return value


class ScheduleBook:
    """What the last call of each repeatable operation asked of the dealer.

    `begin(digest, first)` starts an operation (digest None: one that changes state, which is
    neither recorded nor planned) and returns its plan: [(index, kind, params, nbytes)], or
    None; `record(index, kind, params, nbytes)` notes each request the operation makes.
    """

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        #: digest -> (requests as (offset, kind, params, nbytes), confirmed by two equal calls)
        self._book: OrderedDict[bytes, tuple[list, bool]] = OrderedDict()
        self._digest: bytes | None = None
        self._first = 0
        self._requests: list = []

    @property
    def recording(self) -> bool:
        return self._digest is not None

    def begin(self, digest: bytes | None, first: int) -> list | None:
        self._close()
        self._digest, self._first, self._requests = digest, first, []
        if digest is None or digest not in self._book:
            return None
        schedule, confirmed = self._book[digest]
        if not confirmed:
            return None
        return [(first + offset, kind, _renumber(params, first, False), nbytes)
                for offset, kind, params, nbytes in schedule]

    def record(self, index: int, kind: str, params: dict, nbytes: int = 0) -> None:
        if self._digest is not None:
            self._requests.append((index - self._first, kind, _renumber(params, self._first, True), nbytes))

    def _close(self) -> None:
        if self._digest is None:
            return
        previous = self._book.pop(self._digest, None)
        same = previous is not None and _requests_equal(previous[0], self._requests)
        self._book[self._digest] = (self._requests, same)
        while len(self._book) > self.capacity:
            self._book.popitem(last=False)
        self._digest = None


def _requests_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[:3] == y[:3] for x, y in zip(a, b))


class PlanFollower:
    """Server 1's side: checks that each request is the next one of the current plan before
    the material the dealer dealt ahead for it is used."""

    def __init__(self):
        self.book = ScheduleBook()
        self.version = 0
        self._expected: deque = deque()

    def begin(self, op: str | None, key, first: int) -> bytes | None:
        """Start an operation (op None: one that changes the servers' state) with its plan
        key; returns the digest to send the dealer, or None when nothing need be sent (a
        state change while nothing is recorded)."""
        self.finish()
        if op is None:
            self.version += 1
            marker_needed = self.book.recording
            self.book.begin(None, first)
            return b"" if marker_needed else None
        digest = op_digest(self.version, op, key)
        self._expected = deque(self.book.begin(digest, first) or [])
        return digest

    def check(self, index: int, kind: str, params: dict) -> None:
        if self._expected:
            want = self._expected.popleft()
            if want[:3] != (index, kind, params):
                self._expected.clear()
                raise DealerAheadMismatch(
                    f"request {index}: the operation asks for {kind!r} {params}, but its last two calls "
                    f"asked for {want[1]!r} {want[2]} here, and the dealer has dealt that ahead")
        self.book.record(index, kind, params)

    def finish(self) -> None:
        if self._expected:
            left = len(self._expected)
            self._expected.clear()
            raise DealerAheadMismatch(
                f"the operation ended {left} requests short of what its last two calls asked for, "
                "which the dealer has dealt ahead")
