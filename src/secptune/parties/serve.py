"""Each long-running role's serve loop (`secptune serve --role ...`) on separate hosts.

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
from pathlib import Path

from .. import models  # noqa: F401  (registers the scorer's server operations)
from ..models.deployment import ModelCard, developer_deploy
from ..mpc.comm import DEALER, DEVELOPER, OWNER, SERVERS, PeerFailed
from ..mpc.dealer import Dealer
from ..mpc.network import NetworkChannel, Transport
from ..mpc.party import Developer, Server
from ..mpc.prg import derive_seed, new_seed
from ..mpc.session import run_server_op
from ..tuning.developer import DeploymentRequest, calibration_for
from .developer import DeveloperModel, load_developer_model
from .file import Parties
from .handshake import HandshakeRefused, check_hello, handshake, hello, log, run_session, requested_test_seed, wait_begin


# -- servers --------------------------------------------------------------------------------

def serve_server(index: int, parties: Parties, transport: Transport, test_seeds: bool = False,
                 sessions: int | None = None) -> None:
    name, peer = SERVERS[index], SERVERS[1 - index]
    done = 0
    log(name, f"listening ({'CURVE-encrypted' if parties.encrypt else 'UNENCRYPTED'}); waiting for the owner")
    while sessions is None or done < sessions:
        session, begin = wait_begin(transport, OWNER)
        channel = NetworkChannel(transport, session, parties.message_timeout, watch=(peer, DEALER, OWNER, DEVELOPER))

        def body():
            mine = hello(name, parties, parties.model, bool(begin.get("test_seed")))
            check_hello(name, mine, OWNER, begin.get("hello"))
            seed = requested_test_seed(begin, test_seeds, name)
            transport.wait_connected([peer, DEALER, DEVELOPER], parties.connect_timeout)
            channel.send_control(DEALER, "begin", {"hello": mine, "test_seed": seed})
            handshake(channel, name, mine, [peer, DEVELOPER], [peer, DEALER, DEVELOPER])
            channel.send_control(OWNER, "hello", mine)
            _, dealer_seed = channel.recv_control(DEALER, expect="seed")
            input_seeds = {OWNER: None, DEVELOPER: None}
            if index == 0:
                for party in (OWNER, DEVELOPER):
                    _, input_seeds[party] = channel.recv_control(party, expect="seed")
            server = Server(index, channel, dealer_seed, input_seeds, parties.config)
            log(name, f"session {session} started")
            while True:
                kind, request = channel.recv_control(OWNER, timeout=math.inf)
                if kind == "end":
                    server.stop_dealer()
                    log(name, f"session {session} ended by the owner")
                    return
                if kind != "call":
                    raise PeerFailed(f"{name}: unexpected {kind!r} from the owner")
                cost, labels = run_server_op(server, request["op"], request["params"])
                channel.send_control(OWNER, "done", {"cost": cost.as_dict(),
                                                     "labels": {k: v.as_dict() for k, v in labels.items()}})

        run_session(name, channel, body)
        done += 1


# -- dealer ---------------------------------------------------------------------------------

def serve_dealer(parties: Parties, transport: Transport, test_seeds: bool = False, sessions: int | None = None) -> None:
    done = 0
    log(DEALER, "connecting to the servers; waiting for a session")
    while sessions is None or done < sessions:
        session, begin1 = wait_begin(transport, SERVERS[1])
        channel = NetworkChannel(transport, session, parties.message_timeout, watch=SERVERS)

        def body():
            _, begin0 = channel.recv_control(SERVERS[0], expect="begin")
            mine = hello(DEALER, parties, parties.model, begin1.get("test_seed") is not None)
            for server, begin in zip(SERVERS, (begin0, begin1)):
                check_hello(DEALER, mine, server, begin.get("hello"))
            if begin0.get("test_seed") != begin1.get("test_seed"):
                raise HandshakeRefused("dealer refuses the session: the servers sent different test seeds")
            master = requested_test_seed(begin1, test_seeds, DEALER)
            for server in SERVERS:
                channel.send_control(server, "hello", mine)
            if master is not None:
                seeds = (derive_seed(master, "dealer0"), derive_seed(master, "dealer1"))
            else:
                seeds = (new_seed(), new_seed())
            for server, seed in zip(SERVERS, seeds):
                channel.send_control(server, "seed", seed)
            channel.timeout = math.inf           # idle between requests is normal; a lost server is not
            log(DEALER, f"session {session} started")
            dealer = Dealer(seeds, channel)
            dealer.serve()
            log(DEALER, f"session {session} ended ({dealer.dealt_ahead} requests dealt ahead of the servers, "
                        f"{dealer.dealt_on_demand} on demand)")

        run_session(DEALER, channel, body)
        done += 1


# -- developer ------------------------------------------------------------------------------

def serve_developer(parties: Parties, transport: Transport, model: DeveloperModel, test_seeds: bool = False,
                    sessions: int | None = None) -> None:
    if parties.model and parties.model != model.fingerprint:
        log(DEVELOPER, f"warning: this model's fingerprint {model.fingerprint} is not the one in "
                       f"{parties.path} ({parties.model}): sessions will be refused")
    calibrations: dict[str, object] = {}
    done = 0
    log(DEVELOPER, f"serving {model.folder} ({model.attention.kind} attention, {model.fingerprint[:19]}...); "
                   f"waiting for the owner")
    while sessions is None or done < sessions:
        session, begin = wait_begin(transport, OWNER)
        channel = NetworkChannel(transport, session, parties.message_timeout, watch=(*SERVERS, OWNER))

        def body():
            mine = hello(DEVELOPER, parties, model.fingerprint, bool(begin.get("test_seed")))
            check_hello(DEVELOPER, mine, OWNER, begin.get("hello"))
            master = requested_test_seed(begin, test_seeds, DEVELOPER)
            transport.wait_connected(list(SERVERS), parties.connect_timeout)
            handshake(channel, DEVELOPER, mine, SERVERS, SERVERS)
            channel.send_control(OWNER, "hello", mine)
            seed = derive_seed(master, "developer0") if master is not None else new_seed()
            channel.send_control(SERVERS[0], "seed", seed)
            developer = Developer(channel, seed, parties.config)
            log(DEVELOPER, f"session {session} started")
            while True:
                kind, request = channel.recv_control(OWNER, timeout=math.inf)
                if kind == "end":
                    log(DEVELOPER, f"session {session} ended by the owner")
                    return
                if kind != "deploy":
                    raise PeerFailed(f"{DEVELOPER}: unexpected {kind!r} from the owner")
                request = DeploymentRequest.from_wire(request)
                calibration = None
                if request.calibrate:
                    key = json.dumps(request.to_wire(), sort_keys=True)
                    if key not in calibrations:
                        log(DEVELOPER, "calibrating for the owner's settings")
                        calibrations[key] = calibration_for(request, model.config, model.weights,
                                                            model.attention, model.tokenizer,
                                                            gelu_channels=model.gelu_bounds == "channel")
                    calibration = calibrations[key]
                card = ModelCard.of(model.folder, model.config, model.weights, model.attention,
                                    public_words=request.embedding == "public",
                                    model_fingerprint=model.fingerprint)
                channel.send_control(OWNER, "card", {"card": card.to_wire(),
                                                     "calibration": calibration.ranges if calibration else None})
                developer_deploy(developer, model.config, model.weights, model.attention, calibration)
                log(DEVELOPER, "deployed the model to the servers")

        run_session(DEVELOPER, channel, body)
        done += 1


def serve(role: str, parties: Parties, secret_key: str | Path | None = None, test_seeds: bool = False,
          sessions: int | None = None, model: str = "minilm", attention: str = "rfa",
          gelu_bounds: str = "channel") -> None:
    """`secptune serve`: run `role` until interrupted (or for `sessions` sessions)."""
    if role not in (*SERVERS, DEALER, DEVELOPER):
        raise ValueError(f"--role must be server0, server1, dealer or developer, got {role!r}")
    developer_model = load_developer_model(model, attention, gelu_bounds) if role == DEVELOPER else None
    with parties.transport(role, secret_key) as transport:
        if role in SERVERS:
            serve_server(SERVERS.index(role), parties, transport, test_seeds, sessions)
        elif role == DEALER:
            serve_dealer(parties, transport, test_seeds, sessions)
        else:
            serve_developer(parties, transport, developer_model, test_seeds, sessions)
