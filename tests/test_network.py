"""Parties on separate hosts: the wire format, the encrypted and authenticated transport, the
session handshake, a networked tuning step bit-identical to the in-process one, what an
eavesdropper on the wire sees, and faults (a killed server, a peer that never connects).

The networked tests run the servers, the dealer and the developer as `secptune serve` OS
processes on loopback (the data owner is this process, or a `secptune tune` process), on a
tiny random-weight BERT."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import secptune
from secptune.mpc import Config, LocalSession
from secptune.mpc.comm import PARTIES, PeerFailed
from secptune.parties import HandshakeRefused, Parties, RemoteSession
from secptune.mpc.keys import make_keys
from secptune.mpc.network import AuthenticationRefused, NetworkChannel, link_endpoint
from secptune.mpc.wire import WireError, decode, encode
from secptune.tuning.job import TuneJob, run_job

SRC = str(Path(secptune.__file__).resolve().parents[1])
SMALL = dict(attention="softmax", shots=4, test_size=4, max_length=12, prompt_length=2, dim=8, popsize=4,
             generations=2, batch=4, eval_every=2, embedding="public")
TEST_SEED = bytes(range(16))


# -- the wire format ------------------------------------------------------------------------

def test_payloads_cross_the_wire_as_json_and_raw_buffers_never_pickles():
    payload = {"shares": [torch.arange(6, dtype=torch.int64).reshape(2, 3), (torch.tensor([1.5]), 16)],
               "dcf": {"cw": np.arange(4, dtype=np.uint64)}, "seed": b"\x00\x01", 3: None, "size": torch.Size([2, 3]),
               "bits": torch.tensor([True, False]), "inf": float("inf")}
    header, buffers = encode(payload)
    json.loads(header)                                   # the header is plain JSON
    assert len(buffers) == 5                             # one raw buffer per tensor, array, bytes
    assert bytes(buffers[0]) == payload["shares"][0].numpy().tobytes()
    out = decode(header, [bytes(b) for b in buffers])
    assert torch.equal(out["shares"][0], payload["shares"][0]) and out["shares"][1][1] == 16
    assert isinstance(out["shares"][1], tuple) and out["size"] == (2, 3) and out[3] is None
    assert np.array_equal(out["dcf"]["cw"], payload["dcf"]["cw"]) and out["seed"] == b"\x00\x01"
    assert out["inf"] == float("inf") and out["bits"].tolist() == [True, False]
    with pytest.raises(WireError, match="cannot send a"):
        encode({"x": object()})
    with pytest.raises(WireError):
        decode(b'{"T": 0, "dtype": "int64", "shape": [4]}', [b"\x00" * 8])   # a buffer of the wrong size
    with pytest.raises(WireError):
        decode(b"\x80\x04\x95", [])                                           # a pickle is not a header


# -- deployments on loopback ----------------------------------------------------------------

def _free_base() -> int:
    """A base port whose next 8 ports are free (each party listens on base + peer index)."""
    for _ in range(100):
        base = random.randrange(20000, 60000, 10)
        try:
            socks = []
            for port in range(base, base + 8):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def write_parties(folder: Path, keys: Path, addresses: dict[str, str], **settings) -> Path:
    protocol = {"frac_bits": 16, "compare_bits": 36, **settings.pop("protocol", {})}
    transport = {"encrypt": True, "connect_timeout": 60, "message_timeout": 120, "heartbeat": 1.0, **settings}
    lines = ["[protocol]"] + [f"{k} = {json.dumps(v)}" for k, v in protocol.items()]
    lines += ["[transport]"] + [f"{k} = {json.dumps(v)}" for k, v in transport.items()]
    for party in PARTIES:
        lines.append(f"[parties.{party}]")
        if party in addresses:
            lines.append(f'address = "{addresses[party]}"')
        lines.append(f'public_key = "{keys / (party + ".key")}"')
    path = folder / f"parties-{random.randrange(1 << 30)}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def loopback_addresses() -> dict[str, str]:
    return {p: f"tcp://127.0.0.1:{_free_base()}" for p in ("server0", "server1", "developer")}


class Deployment:
    """Keys, a parties file and the `secptune serve` processes of one deployment."""

    def __init__(self, folder: Path, model: Path, **settings):
        self.folder, self.model = folder, model
        self.keys = folder / "keys"
        if not self.keys.exists():
            make_keys(self.keys)
        self.addresses = loopback_addresses()
        self.parties = write_parties(folder, self.keys, self.addresses, **settings)
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self) -> dict:
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        return env

    def start(self, *roles: str) -> None:
        for role in roles:
            log = open(self.folder / f"{role}.log", "ab")
            cmd = [sys.executable, "-m", "secptune.cli", "serve", "--role", role, "--config", str(self.parties),
                   "--threads", "1", "--insecure-test-seeds"]
            if role == "developer":
                cmd += ["--model", str(self.model), "--attention", "softmax"]
            self.procs[role] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        deadline = time.monotonic() + 180         # imports take a while with four processes on two cores
        for role in roles:
            while "waiting for" not in self.log(role).splitlines()[-1:][0] if self.log(role) else True:
                assert self.procs[role].poll() is None, self.log(role)
                assert time.monotonic() < deadline, f"{role} did not start: {self.log(role)}"
                time.sleep(0.1)

    def kill(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def log(self, role: str) -> str:
        path = self.folder / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for role in list(self.procs):
            proc = self.procs.pop(role)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_bert):
    d = Deployment(tmp_path_factory.mktemp("deployment"), tiny_bert)
    d.start("server0", "server1", "dealer", "developer")
    yield d
    d.stop()


def _owned_sends(session):
    """Every data payload the owner sends (its input shares), kept as it is sent."""
    sent = []
    original = session.channel._send

    def keep(peer, payload):
        sent.append((peer, payload))
        original(peer, payload)

    session.channel._send = keep
    return sent


@pytest.mark.parametrize("options", [{}, {"head": "similarity", "task": "sms-spam", "class_prior": "pool",
                                          "pass_sequences": 8}],
                         ids=["masked-lm", "several-descriptions-two-passes"])
@pytest.mark.slow
def test_a_networked_tuning_run_reveals_bit_identical_scores_to_the_in_process_one(deployment, tmp_path, options):
    job = TuneJob(model=str(deployment.model), **{**SMALL, "generations": 6}, **options)
    sessions_before = len(re.findall(r"requests dealt ahead", deployment.log("dealer")))
    with LocalSession(Config(), timeout=120, seed=TEST_SEED, record=True) as local:
        local_results = run_job(job, tmp_path / "local", session=local)
        local_revealed = [payload for peer, payload in local.owner.channel.received]
    parties = Parties.load(deployment.parties)
    with RemoteSession(parties, test_seed=TEST_SEED, record=True) as remote:
        net_results = run_job(job, tmp_path / "net", session=remote)
        net_revealed = [payload for peer, payload in remote.channel.received]
    # every share either server revealed to the owner, in order, bit for bit
    assert len(net_revealed) == len(local_revealed) > 2 * job.generations
    for ours, theirs in zip(net_revealed, local_revealed):
        assert len(ours) == len(theirs)
        for (share_n, frac_n), (share_l, frac_l) in zip(ours, theirs):
            assert frac_n == frac_l and torch.equal(share_n, share_l)
    for key in ("loss_min", "loss_mean", "dev_accuracy"):
        assert [g[key] for g in net_results["generations"]] == [g[key] for g in local_results["generations"]]
    assert net_results["accuracy"] == local_results["accuracy"]
    # the same traffic, counted by the servers of both runs
    for key in ("online_bytes", "rounds", "dealer_bytes", "io_bytes"):
        assert net_results["cost"]["per_generation"][key] == local_results["cost"]["per_generation"][key]
    assert net_results["network"]["encrypted"] and net_results["network"]["wire_bytes"]["server1"]["sent"] > 0
    assert json.loads((tmp_path / "net" / "results.json").read_text())["network"] == net_results["network"]
    # the networked dealer dealt the repeated passes ahead of the servers (its log says how many)
    deadline = time.monotonic() + 30
    while len(ended := re.findall(r"ended \((\d+) requests dealt ahead", deployment.log("dealer"))) < sessions_before + 1:
        assert time.monotonic() < deadline, deployment.log("dealer")
        time.sleep(0.2)
    assert int(ended[-1]) > 0


@pytest.mark.slow
def test_a_setting_that_differs_is_refused_naming_it(deployment, tmp_path):
    other = write_parties(tmp_path, deployment.keys, deployment.addresses, protocol={"frac_bits": 20})
    with pytest.raises((HandshakeRefused, PeerFailed), match="frac_bits differs: (20|16) at"):
        RemoteSession(Parties.load(other), test_seed=TEST_SEED)      # refused, not timed out
    fingerprint = write_parties(tmp_path, deployment.keys, deployment.addresses,
                                protocol={"model": "sha256:" + "0" * 64})
    with pytest.raises((HandshakeRefused, PeerFailed), match="model fingerprint differs"):
        RemoteSession(Parties.load(fingerprint), test_seed=TEST_SEED)
    # the parties are still serving: the next session goes through
    with RemoteSession(Parties.load(deployment.parties), test_seed=TEST_SEED) as session:
        assert session.model_fingerprint.startswith("sha256:")


# -- an eavesdropper ------------------------------------------------------------------------

class RecordingProxy:
    """A TCP relay on loopback that keeps every byte it forwards, both ways."""

    def __init__(self, listen_port: int, target_port: int):
        self.captured = bytearray()
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:                      # the party is not up yet: its peer will retry
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@contextmanager
def _proxied_owner_parties(deployment, tmp_path, **settings):
    """A parties file for the owner whose links to both servers go through recording proxies."""
    proxies, addresses = [], dict(deployment.addresses)
    for server in ("server0", "server1"):
        base = _free_base()
        real = _port(link_endpoint(deployment.addresses[server], "owner"))
        proxies.append(RecordingProxy(_port(link_endpoint(f"tcp://127.0.0.1:{base}", "owner")), real))
        addresses[server] = f"tcp://127.0.0.1:{base}"
    try:
        yield write_parties(tmp_path, deployment.keys, addresses, **settings), proxies
    finally:
        for p in proxies:
            p.close()


def _windows(payload) -> list[bytes]:
    """16-byte pieces of every tensor in a payload (start, middle, end)."""
    out = []
    tensors = payload if isinstance(payload, list) else [payload]
    for t in tensors:
        raw = t.numpy().tobytes()
        for start in sorted({0, (len(raw) // 2) & ~7, max(len(raw) - 16, 0)}):
            if len(raw) >= start + 16:
                out.append(raw[start:start + 16])
    return out


@pytest.mark.slow
def test_the_owners_shares_never_cross_the_wire_in_the_clear(deployment, tmp_path):
    job = TuneJob(model=str(deployment.model), **dict(SMALL, generations=1))
    with _proxied_owner_parties(deployment, tmp_path) as (parties, proxies):
        with RemoteSession(Parties.load(parties), test_seed=TEST_SEED) as session:
            sent = _owned_sends(session)
            run_job(job, tmp_path / "run", session=session)
    captured = b"".join(bytes(p.captured) for p in proxies)
    shares = [payload for peer, payload in sent if peer == "server1"]
    windows = [w for payload in shares for w in _windows(payload)]
    assert len(windows) > 20 and len(captured) > sum(t.numel() * 8 for t in shares)
    assert not [w for w in windows if w in captured]


def test_an_unencrypted_link_would_show_the_shares(tmp_path):
    """The capture's control: the same proxy on a link with encryption off (the benchmark's
    baseline) sees a share's bytes; with CURVE it does not."""
    from secptune.parties import Parties as P

    keys = tmp_path / "keys"
    make_keys(keys)
    share = torch.randint(-2**62, 2**62, (64, 32), dtype=torch.int64)
    for encrypt in (False, True):
        addresses = loopback_addresses()
        real = write_parties(tmp_path, keys, addresses, encrypt=encrypt)
        base = _free_base()
        proxy = RecordingProxy(_port(link_endpoint(f"tcp://127.0.0.1:{base}", "owner")),
                               _port(link_endpoint(addresses["server1"], "owner")))
        proxied = write_parties(tmp_path, keys, dict(addresses, server1=f"tcp://127.0.0.1:{base}"), encrypt=encrypt)
        with P.load(real).transport("server1") as server, P.load(proxied).transport("owner") as owner:
            owner.wait_connected(["server1"], 10)
            NetworkChannel(owner, "s").send("server1", share)
            got = NetworkChannel(server, "s", timeout=10).recv("owner")
        proxy.close()
        assert torch.equal(got, share)
        assert (share.numpy().tobytes()[:64] in bytes(proxy.captured)) == (not encrypt)


# -- keys and peers -------------------------------------------------------------------------

def test_a_party_with_a_wrong_key_is_refused_with_a_clear_error(tmp_path):
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    make_keys(keys)
    make_keys(stranger, ["owner"])
    parties = Parties.load(write_parties(tmp_path, keys, loopback_addresses()))
    with parties.transport("server0") as server0:
        with parties.transport("owner", stranger / "owner.key_secret") as owner:
            with pytest.raises(AuthenticationRefused, match="server0 at .* refused owner"):
                owner.wait_connected(["server0"], 20)     # refused at once, not "never connected"
        deadline = time.monotonic() + 5
        while server0.links["owner"].auth_failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "not in parties.toml" in server0.links["owner"].auth_failure
        with parties.transport("owner") as owner:              # the right key gets in
            owner.wait_connected(["server0"], 20)


def test_a_peer_that_never_connects_times_out_naming_it(tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys)
    parties = write_parties(tmp_path, keys, loopback_addresses(), connect_timeout=2)
    proc = subprocess.run([sys.executable, "-m", "secptune.cli", "tune", "--parties", str(parties), "--task", "trec",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("secptune: error: owner: these peers never connected within 2 s")
    for peer in ("server0", "server1", "developer"):
        assert peer in last


# The owner as `secptune tune`, with one hook: the first server operation after generation 0's
# checkpoint (generation 1's secure pass) is sent to both servers, and then the owner says so on
# stdout and waits for a line on stdin before its own part of the pass.  The test kills server 1
# in that window: no sleep, no race with the pass.
OWNER_HOLDING_IN_GENERATION_1 = """
import sys
from pathlib import Path

from secptune.cli import main
from secptune.parties import RemoteSession

checkpoint, call, held = Path(sys.argv[1]), RemoteSession.call, []


def call_and_hold(self, op, params, owner_work=None):
    if held or not checkpoint.exists():
        return call(self, op, params, owner_work)
    held.append(op)

    def hold():
        print(f"holding in generation 1: {op}", flush=True)
        sys.stdin.readline()
        return owner_work() if owner_work is not None else None

    return call(self, op, params, hold)


RemoteSession.call = call_and_hold
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_server_killed_mid_step_fails_the_owner_quickly_and_resume_completes(tmp_path, tiny_bert):
    d = Deployment(tmp_path, tiny_bert)
    d.start("server0", "server1", "dealer", "developer")
    out = tmp_path / "run"
    args = ["--model", str(tiny_bert), "--task", "movie-reviews", "--attention", "softmax", "--shots", "4",
            "--test-size", "4", "--max-length", "12", "--prompt-length", "2", "--dim", "8", "--popsize", "4",
            "--batch", "8", "--generations", "5", "--eval-every", "5", "--embedding", "public",
            "--parties", str(d.parties), "--out", str(out)]
    stderr = open(tmp_path / "owner.err", "w")
    try:
        owner = subprocess.Popen([sys.executable, "-c", OWNER_HOLDING_IN_GENERATION_1, str(out / "checkpoint.npz"),
                                  "tune", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                 text=True, env=d.env())
        lines = []
        while not (lines and lines[-1].startswith("holding in generation 1: scores")):
            line = owner.stdout.readline()     # blocks until the hook speaks (or the owner ends)
            assert line, f"the owner ended before generation 1: {(tmp_path / 'owner.err').read_text()}"
            lines.append(line)
        d.kill("server1")                        # both servers are inside generation 1's pass
        owner.stdin.write("go\n")
        owner.stdin.flush()
        owner.wait(timeout=60)                   # a guard against a hang only
        err = (tmp_path / "owner.err").read_text()
        assert owner.returncode == 1
        last = err.strip().splitlines()[-1]
        assert last.startswith("secptune: error:") and "server1" in last
        # the lost connection ended the run, not the 120 s message timeout of parties.toml
        assert "lost the connection to server1" in last and "no message" not in last
        assert not (out / "results.json").exists()
        d.start("server1")                       # server 0, the dealer and the developer kept serving
        done = subprocess.run([sys.executable, "-m", "secptune.cli", "tune", *args, "--resume"],
                              capture_output=True, text=True, timeout=300, env=d.env())
        assert done.returncode == 0, done.stderr
        results = json.loads((out / "results.json").read_text())
        assert [g["generation"] for g in results["generations"]] == list(range(5))
    finally:
        stderr.close()
        d.stop()
