"""The MPC engine: 2-out-of-2 additive sharing over Z_2^64 with fixed-point encoding, a dealer
of correlated randomness, communicators that count bytes and rounds, and the protocols a
transformer needs.  Semi-honest security, two non-colluding servers and a non-colluding dealer."""

from . import protocols  # noqa: F401  (registers the dealer's correlations)
from .comm import Cost, PeerTimeout
from .netmodel import LAN, NETWORKS, WAN_100, WAN_200, Network
from .party import Config, Developer, Owner, RevealDenied, Server
from .ring import FixedPoint, FixedPointOverflow
from .session import LocalSession, RunResult
from .shared import SharedTensor, cat, stack

__all__ = ["Config", "Cost", "Developer", "FixedPoint", "FixedPointOverflow", "LAN", "LocalSession", "NETWORKS",
           "Network", "Owner", "PeerTimeout", "RevealDenied", "RunResult", "Server", "SharedTensor",
           "WAN_100", "WAN_200", "cat", "stack"]
