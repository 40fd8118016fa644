"""The dealer's bytes of one secure layer, per protocol label (both servers), with server 0's
online bytes and comparisons: `python dealer_by_label.py roberta-large 512 rfa 64` (shape,
tokens, attention, RFA features), run from this folder in the package's environment."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))      # benchmarks/
from forward import secure_layer
from secptune.mpc.comm import cost_difference
shape, L, kind, M = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
per = {}
def inspect(server, before):
    for label, c in cost_difference(server.channel.meter.snapshot(), before).items():
        per.setdefault(label, {})[server.index] = (c.online_bytes, c.dealer_bytes, c.comparisons)
out, ref, costs = secure_layer(shape, L, kind, M, inspect=inspect)
print({k: (v.online_bytes, v.dealer_bytes, v.rounds) for k, v in costs.items()})
tot = 0
rows = []
for label, d in per.items():
    dealer = sum(v[1] for v in d.values()); online = d[0][0] if 0 in d else 0
    comps = d[0][2] if 0 in d else 0
    rows.append((dealer, online, comps, label)); tot += dealer
for dealer, online, comps, label in sorted(rows, reverse=True):
    print(f"{dealer/1e6:10.1f} {online/1e6:8.1f} {comps:10d}  {label}")
print("dealer total MB", tot/1e6)
