"""Tuning generations with the parties as separate processes on shaped networks, beside the
network model's projection; and encryption's cost on loopback.

    sudo python benchmarks/network.py --out bench-net            # needs root (ip netns, tc)

What runs: `secptune serve` processes for server 0, server 1, the dealer and the developer,
and a `secptune tune --parties` data owner, on the converted MiniLM (RFA) with a small job
(`JOB` below).  Settings:

- loopback, CURVE on and off (`[transport] encrypt = false`): encryption's overhead;
- shaped server link (LAN 3 Gbps / 0.8 ms, WAN 200 Mbps / 40 ms, WAN 100 Mbps / 80 ms): server 0
  and server 1 each in a network namespace (iproute2 `ip netns`), joined by their own veth
  pair that carries only the server-to-server link; the dealer, the developer and the owner
  stay in the root namespace, on unshaped veths.  This kernel has no `netem` qdisc (`tc qdisc
  ... netem`: "Specified qdisc kind is unknown", and no module to load), so the link is shaped
  in two parts: the rate by `tc`'s token bucket filter (`tbf`) on both ends of the veth pair,
  and the one-way delay by a userspace relay in server 1's namespace (`DelayRelay` below) that
  forwards each direction's bytes once they are `delay` seconds old.  Only the link the
  network model describes (the servers' online traffic) is shaped; the dealer's and the
  owner's traffic are not, in the model or here.

The projection (`mpc.netmodel`): compute + rounds x latency + online bytes / 2 x 8 / rate,
with each generation's rounds and bytes as counted, and its compute time measured on
unshaped loopback (CURVE on): the wall time of the same generation there.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from secptune.mpc.comm import PARTIES  # noqa: E402
from secptune.mpc.keys import make_keys  # noqa: E402
from secptune.mpc.netmodel import LAN, WAN_100, WAN_200, Network  # noqa: E402

JOB = ["--task", "movie-reviews", "--model", "minilm", "--attention", "rfa", "--embedding", "public",
       "--shots", "4", "--test-size", "2", "--max-length", "12", "--prompt-length", "2", "--dim", "10",
       "--popsize", "2", "--batch", "2", "--generations", "4", "--eval-every", "100"]
NS = ("secp-s0", "secp-s1")
PORT = 7300


class DelayRelay:
    """A TCP relay that holds each direction's bytes for `delay` s before forwarding them."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float):
        self.server = socket.create_server(listen)
        self.target, self.delay = target, delay

    def serve(self):
        while True:
            client, _ = self.server.accept()
            try:
                upstream = socket.create_connection(self.target)
            except OSError:                  # the far end is not up yet: the client retries
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                queue, ready = deque(), threading.Condition()
                threading.Thread(target=self._read, args=(a, queue, ready), daemon=True).start()
                threading.Thread(target=self._write, args=(b, queue, ready), daemon=True).start()

    def _read(self, src, queue, ready):
        try:
            while data := src.recv(1 << 20):
                with ready:
                    queue.append((time.monotonic() + self.delay, data))
                    ready.notify()
        except OSError:
            pass
        with ready:
            queue.append((0.0, b""))
            ready.notify()

    def _write(self, dst, queue, ready):
        try:
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def curve_throughput(curve: bool, messages: int = 100, size: int = 1 << 20) -> float:
    """MB/s of `messages` messages of `size` bytes over one loopback connection (PUSH to PULL),
    with or without CURVE: the transport's raw encryption cost."""
    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        pull.curve_server, pull.curve_secretkey, pull.curve_publickey = True, server_secret, server_public
        push.curve_serverkey, push.curve_publickey, push.curve_secretkey = server_public, client_public, client_secret
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    push.send(b"x")
    pull.recv()
    payload = bytes(size)
    t0 = time.perf_counter()
    sender = threading.Thread(target=lambda: [push.send(payload, copy=False) for _ in range(messages)])
    sender.start()
    for _ in range(messages):
        pull.recv(copy=False)
    sender.join()
    seconds = time.perf_counter() - t0
    ctx.destroy(linger=0)
    return messages * size / seconds / 1e6


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def netns_up(net: Network | None):
    """Namespaces, veths and (for `net`) tbf on the direct server link."""
    netns_down()
    for ns in NS:
        sh("ip", "netns", "add", ns)
    # root <-> server i: 10.8.i.1 (root) / 10.8.i.2 (namespace)
    for i, ns in enumerate(NS):
        sh("ip", "link", "add", f"secp-r{i}", "type", "veth", "peer", "name", f"secp-n{i}")
        sh("ip", "link", "set", f"secp-n{i}", "netns", ns)
        sh("ip", "addr", "add", f"10.8.{i}.1/24", "dev", f"secp-r{i}")
        sh("ip", "link", "set", f"secp-r{i}", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.8.{i}.2/24", "dev", f"secp-n{i}")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"secp-n{i}", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    # server 0 <-> server 1 directly: 10.9.0.1 / 10.9.0.2
    sh("ip", "link", "add", "secp-d0", "type", "veth", "peer", "name", "secp-d1")
    for i, ns in enumerate(NS):
        sh("ip", "link", "set", f"secp-d{i}", "netns", ns)
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.9.0.{i + 1}/24", "dev", f"secp-d{i}")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"secp-d{i}", "up")
        if net is not None:
            burst = max(256 * 1024, int(net.bandwidth_bps / 8 * 0.002))
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", f"secp-d{i}", "root", "tbf", "rate",
               f"{int(net.bandwidth_bps)}bit", "burst", str(burst), "latency", "2s")
    # the root namespace reaches server 0's address (10.9.0.1) over server 0's root veth
    sh("ip", "route", "add", "10.9.0.1/32", "via", "10.8.0.2")


def netns_down():
    for ns in NS:
        sh("ip", "netns", "del", ns, check=False)
    for dev in ("secp-r0", "secp-r1"):
        sh("ip", "link", "del", dev, check=False)
    sh("ip", "route", "del", "10.9.0.1/32", check=False)


def parties_file(path: Path, keys: Path, addresses: dict, encrypt: bool) -> Path:
    lines = ["[protocol]", "frac_bits = 16", "compare_bits = 36", "[transport]",
             f"encrypt = {'true' if encrypt else 'false'}", "connect_timeout = 120", "message_timeout = 1200"]
    for party in PARTIES:
        lines.append(f"[parties.{party}]")
        if party in addresses:
            lines.append(f'address = "{addresses[party]}"')
        lines.append(f'public_key = "{keys / (party + ".key")}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def run_setting(name: str, out: Path, keys: Path, encrypt: bool = True, net: Network | None = None,
                namespaces: bool = False) -> dict:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    procs = []

    def start(role, config, ns=None, log=None):
        cmd = [sys.executable, "-m", "secptune.cli", "serve", "--role", role, "--config", str(config),
               "--threads", "1"]
        if ns:
            cmd = ["ip", "netns", "exec", ns] + cmd
        procs.append(subprocess.Popen(cmd, env=env, stdout=open(folder / f"{role}.log", "w"),
                                      stderr=subprocess.STDOUT))

    try:
        if namespaces:
            netns_up(net)
            addresses = {"server0": f"tcp://10.9.0.1:{PORT}", "server1": f"tcp://10.8.1.2:{PORT}",
                         "developer": f"tcp://127.0.0.1:{PORT}"}
            common = parties_file(folder / "parties.toml", keys, addresses, encrypt)
            relay_port = PORT + 50
            # server 1 reaches server 0 through the delay relay in its own namespace
            s1 = parties_file(folder / "parties-server1.toml", keys,
                              dict(addresses, server0=f"tcp://10.9.0.2:{relay_port - 1}"), encrypt)
            relay = [sys.executable, str(Path(__file__).resolve()), "relay", "--listen", f"10.9.0.2:{relay_port}",
                     "--to", f"10.9.0.1:{PORT + 1}", "--delay", str(net.latency_s)]
            procs.append(subprocess.Popen(["ip", "netns", "exec", NS[1]] + relay, env=env,
                                          stdout=open(folder / "relay.log", "w"), stderr=subprocess.STDOUT))
            start("server0", common, NS[0])
            start("server1", s1, NS[1])
        else:
            addresses = {p: f"tcp://127.0.0.1:{PORT + 10 * i}" for i, p in enumerate(("server0", "server1", "developer"))}
            common = parties_file(folder / "parties.toml", keys, addresses, encrypt)
            start("server0", common)
            start("server1", common)
        start("dealer", common)
        start("developer", common)
        t0 = time.perf_counter()
        owner = subprocess.run([sys.executable, "-m", "secptune.cli", "tune", *JOB, "--parties", str(common),
                                "--out", str(folder / "run")], env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        (folder / "owner.log").write_text(owner.stderr)
        if owner.returncode != 0:
            raise RuntimeError(f"{name}: the owner failed: {owner.stderr[-2000:]}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if namespaces:
            netns_down()
    results = json.loads((folder / "run" / "results.json").read_text())
    return {"name": name, "owner_seconds": total, "generations": results["generations"],
            "wire_bytes": results["network"]["wire_bytes"], "setup": results["cost"]["setup"]}


def summary(runs: dict) -> str:
    base = runs["loopback, CURVE"]["generations"]
    lines = ["| setting | generation | measured s | projected s | measured / projected | online MB | rounds |",
             "|---|---|---|---|---|---|---|"]
    for name, net in (("loopback, CURVE", None), ("loopback, no encryption", None), ("LAN", LAN),
                      ("WAN 200 Mbps / 40 ms", WAN_200), ("WAN 100 Mbps / 80 ms", WAN_100)):
        if name not in runs:
            continue
        for g, ref in zip(runs[name]["generations"], base):
            c = g["cost"]
            projected = net.seconds(c["online_bytes"], c["rounds"], ref["seconds"]) if net else None
            shown = ("", "") if projected is None else (f"{projected:.2f}", f"{g['seconds'] / projected:.2f}")
            lines.append(f"| {name} | {g['generation']} | {g['seconds']:.2f} | {shown[0]} | {shown[1]} | "
                         f"{c['online_bytes'] / 1e6:.1f} | {c['rounds']} |")
    enc, plain = runs.get("loopback, CURVE"), runs.get("loopback, no encryption")
    if enc and plain:
        e = statistics.median(g["seconds"] for g in enc["generations"])
        p = statistics.median(g["seconds"] for g in plain["generations"])
        lines.append(f"\nencryption: median generation {e:.2f} s with CURVE, {p:.2f} s without "
                     f"({(e / p - 1) * 100:+.1f}%); whole owner run {enc['owner_seconds']:.1f} s vs "
                     f"{plain['owner_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    relay = sub.add_parser("relay", help="(internal) the delay relay")
    relay.add_argument("--listen", required=True)
    relay.add_argument("--to", required=True)
    relay.add_argument("--delay", type=float, required=True)
    sub.add_parser("curve-throughput", help="MB/s over one loopback connection with and without CURVE")
    parser.add_argument("--out", default="bench-net")
    parser.add_argument("--settings", nargs="+", default=["loopback", "plain", "lan", "wan200", "wan100"])
    args = parser.parse_args(argv)
    if args.command == "relay":
        host, port = args.listen.rsplit(":", 1)
        thost, tport = args.to.rsplit(":", 1)
        DelayRelay((host, int(port)), (thost, int(tport)), args.delay).serve()
        return
    if args.command == "curve-throughput":
        for curve in (False, True, False, True):
            print(f"{'CURVE' if curve else 'plain'}: {curve_throughput(curve):.0f} MB/s")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = out / "keys"
    if not keys.exists():
        make_keys(keys)
    table = {"loopback": ("loopback, CURVE", dict()), "plain": ("loopback, no encryption", dict(encrypt=False)),
             "lan": ("LAN", dict(net=LAN, namespaces=True)), "wan200": ("WAN 200 Mbps / 40 ms", dict(net=WAN_200, namespaces=True)),
             "wan100": ("WAN 100 Mbps / 80 ms", dict(net=WAN_100, namespaces=True))}
    runs = {}
    path = out / "runs.json"
    if path.exists():
        runs = json.loads(path.read_text())
    for key in args.settings:
        name, options = table[key]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_setting(key, out, keys, **options)
        path.write_text(json.dumps(runs, indent=1))
    text = summary(runs)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
