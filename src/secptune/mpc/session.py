"""All four parties in one process, one thread each: the tests' and the default run's session.

    with LocalSession() as session:
        result = session.run(lambda server, x, y: x * y, torch.randn(3), torch.randn(3))
        result.outputs[0]                      # revealed to the owner (the calling thread)
        result.costs["server0"].rounds

A program is a function of the server and its shares of the owner's inputs (plus public
arguments); it runs on both servers, and whatever shared tensors it returns are revealed to
the owner.  The session persists between runs: the dealer's request numbering, prepared
(masked) weights and the cost meters carry over.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import torch

from .comm import DEALER, DEVELOPER, OWNER, SERVERS, Cost, InProcessHub, PeerFailed, cost_difference, servers_cost
from .dealer import Dealer
from .party import Config, Developer, Owner, Server
from .prg import SEED_BYTES, derive_seed, new_seed


#: named server-side operations (`server_op`): what a session asks both servers to run.  A
#: networked session sends the name and the parameters (public values only) to the servers'
#: processes; a LocalSession calls the function on its server threads.
SERVER_OPS: dict = {}
#: for the operations that change nothing the servers keep that another operation's
#: correlations depend on: what the correlations they ask the dealer for depend on
#: (`plan_key(server, **params)`); two calls with equal keys ask for the same correlations,
#: which the dealer then deals ahead (mpc/ahead.py)
PLAN_KEYS: dict = {}


def server_op(name: str, plan_key=None):
    """Register `fn(server, **params)` as the server-side operation `name`.  `plan_key`: for
    an operation that changes nothing the servers keep (or only adds what no other operation
    reads unless named in its own key, such as texts under a new handle), a function of the
    server and the parameters that determines every shape the operation computes on (True:
    the parameters themselves); None for one that changes the servers' state."""

    def register(fn):
        if name in SERVER_OPS and SERVER_OPS[name] is not fn:
            raise ValueError(f"server operation {name!r} is registered twice")
        SERVER_OPS[name] = fn
        if plan_key is not None:
            PLAN_KEYS[name] = (lambda server, **params: params) if plan_key is True else plan_key
        return fn

    return register


def run_server_op(server: Server, op: str, params: dict) -> tuple[Cost, dict[str, Cost]]:
    """Run a registered operation on one server; returns its cost and its cost per label."""
    if op not in SERVER_OPS:
        raise ValueError(f"unknown server operation {op!r}")
    before = server.channel.meter.snapshot()
    with server.cost() as trace:
        if op in PLAN_KEYS:
            server.dealer.begin(op, PLAN_KEYS[op](server, **params))
        else:
            server.dealer.begin()
        SERVER_OPS[op](server, **params)
    return trace.result, cost_difference(server.channel.meter.snapshot(), before)


@dataclass
class RunResult:
    outputs: list[torch.Tensor]
    costs: dict[str, Cost] = field(default_factory=dict)

    @property
    def cost(self) -> Cost:
        """The run's cost (see `servers_cost`)."""
        return servers_cost(self.costs[SERVERS[0]], self.costs[SERVERS[1]])


def _root_cause(errors: list[BaseException]) -> BaseException:
    """The first error that is not merely another party giving up because of it."""
    causes = [e for e in errors if not isinstance(e, PeerFailed)]
    return (causes or errors)[0]


def _flatten(out) -> list:
    if out is None:
        return []
    if isinstance(out, (list, tuple)):
        return [leaf for item in out for leaf in _flatten(item)]
    if isinstance(out, dict):
        return [leaf for item in out.values() for leaf in _flatten(item)]
    return [out]


class LocalSession:
    """Servers, dealer and owner as threads of this process, talking through queues."""

    def __init__(self, config: Config | None = None, timeout: float = 120.0,
                 record: bool = False, seed: bytes | None = None,
                 threads_per_server: int | None = None):
        self.config = config or Config()
        # both servers compute at once: give each half the cores, or torch's intra-op threads
        # oversubscribe them (set while a run is in progress, restored after)
        self.threads_per_server = threads_per_server or max(1, (os.cpu_count() or 2) // 2)
        if seed is not None and len(seed) != SEED_BYTES:
            raise ValueError(f"a session seed is {SEED_BYTES} bytes")
        master = seed or new_seed()
        self.hub = InProcessHub(timeout=timeout, record=record)
        dealer_seeds = (derive_seed(master, "dealer0"), derive_seed(master, "dealer1"))
        input_seeds = {OWNER: derive_seed(master, "owner0"), DEVELOPER: derive_seed(master, "developer0")}
        self.servers = [
            Server(i, self.hub.channel(SERVERS[i]), dealer_seeds[i], input_seeds, self.config)
            for i in range(2)
        ]
        self.owner = Owner(self.hub.channel(OWNER), input_seeds[OWNER], self.config)
        self.developer = Developer(self.hub.channel(DEVELOPER), input_seeds[DEVELOPER], self.config)
        # the owner here waits for the servers' whole computation: the servers' own timeouts
        # (and the hub's failure flag) bound the wait, not a per-message deadline
        self.owner.channel.timeout = float("inf")
        self.dealer = Dealer(dealer_seeds, self.hub.channel(DEALER))
        self.dealer.channel.timeout = float("inf")   # idle between requests is normal
        self._dealer_error: list[BaseException] = []
        self._dealer_thread = threading.Thread(target=self._serve_dealer, name="dealer", daemon=True)
        self._dealer_thread.start()
        self._closed = False

    def _serve_dealer(self):
        try:
            self.dealer.serve()
        except BaseException as exc:  # surfaced by run()
            self._dealer_error.append(exc)
            self.hub.failed.set()

    def on_servers(self, work, owner_work=None):
        """Run `work(server)` on both servers' threads (and `owner_work()`, the owner's and the
        developer's side, in this one), each server's torch work on its share of the cores;
        return what `owner_work` returns; raise the root cause of any failure."""
        if self._closed:
            raise RuntimeError("the session is closed")
        errors: list[BaseException] = []

        def guarded(server: Server):
            try:
                work(server)
            except BaseException as exc:
                errors.append(exc)
                self.hub.failed.set()

        threads = [threading.Thread(target=guarded, args=(s,), name=s.name) for s in self.servers]
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_per_server)
        for t in threads:
            t.start()
        result = None
        try:
            if owner_work is not None:
                result = owner_work()
        except BaseException as exc:
            if not errors:
                errors.append(exc)
            self.hub.failed.set()
        for t in threads:
            t.join()
        torch.set_num_threads(saved_threads)
        if errors or self._dealer_error:
            self._closed = True
            raise _root_cause(errors + self._dealer_error)
        return result

    def call(self, op: str, params: dict, owner_work=None):
        """Run the registered server operation `op(server, **params)` on both servers and
        `owner_work()` here; returns (what owner_work returned, {server: (cost, cost per label)})."""
        costs = {}

        def work(server: Server):
            costs[server.name] = run_server_op(server, op, params)

        out = self.on_servers(work, owner_work)
        return out, costs

    def run(self, program, *inputs, public: tuple = (), frac: int | None = None) -> RunResult:
        """Share `inputs` from the owner, run `program(server, *shares, *public)` on both
        servers, reveal its shared outputs to the owner and return them with the costs."""
        inputs = [torch.as_tensor(x) for x in inputs]
        costs: dict[str, Cost] = {}

        def serve(server: Server):
            with server.cost() as trace:
                server.dealer.begin()
                shares = [server.input_from_owner(x.shape, frac) for x in inputs]
                out = _flatten(program(server, *shares, *public))
                server.reveal_to(OWNER, out)
            costs[server.name] = trace.result

        def own():
            for x in inputs:
                self.owner.share(x, frac)
            return self.owner.receive()

        outputs = self.on_servers(serve, own)
        return RunResult(outputs, costs)

    def preprocess(self, program, *inputs, public: tuple = (), frac: int | None = None) -> dict[str, Cost]:
        """The offline phase: run `program` dry on both servers (no exchanges; the inputs'
        shapes are all that matters) so that the dealer deals every correlation it will need.
        The next `run` of the same program on inputs of the same shapes then does only the
        online phase.  Returns each server's cost of the preprocessing (dealer traffic and
        the dry computation's time)."""
        shapes = [torch.as_tensor(x).shape for x in inputs]
        costs: dict[str, Cost] = {}

        def offline(server: Server):
            server.dry = True
            server.dealer.begin()
            server.dealer.recording = []
            try:
                with server.cost() as trace:
                    shares = [server.input_from_owner(shape, frac) for shape in shapes]
                    program(server, *shares, *public)
                costs[server.name] = trace.result
            finally:
                server.dry = False
                server.dealer.load()

        self.on_servers(offline)
        return costs

    def close(self):
        if not self._closed:
            self.servers[1].stop_dealer()
            self._closed = True
        self._dealer_thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
