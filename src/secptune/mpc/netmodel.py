"""A network model: turns counted bytes and rounds into projected time.

A round is an exchange in which both servers send at once, so it costs one one-way latency
plus the time to push one direction's bytes through the link (full duplex: the online byte
count covers both directions, so each carries half of it).  Compute time is what was
measured; the projection adds the network on top:

    projected = compute_seconds + rounds * latency + (online_bytes / 2) * 8 / bandwidth

The settings are the paper's: LAN 3 Gbps / 0.8 ms, WAN 100 Mbps / 80 ms and 200 Mbps / 40 ms.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth_bps: float
    latency_s: float

    def seconds(self, online_bytes: float, rounds: int, compute_seconds: float = 0.0) -> float:
        return compute_seconds + rounds * self.latency_s + online_bytes / 2 * 8 / self.bandwidth_bps

    def project(self, cost) -> float:
        """Projected wall time of a measured Cost on this network."""
        return self.seconds(cost.online_bytes, cost.rounds, cost.seconds)


LAN = Network("LAN 3Gbps/0.8ms", 3e9, 0.8e-3)
WAN_100 = Network("WAN 100Mbps/80ms", 100e6, 80e-3)
WAN_200 = Network("WAN 200Mbps/40ms", 200e6, 40e-3)
NETWORKS = (LAN, WAN_200, WAN_100)
