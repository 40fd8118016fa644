"""Where one secure scoring pass spends its time, thread by thread: every thread's stack is
sampled every 20 ms during one pass of P prompts on B texts (MiniLM as `secptune tune` runs
it, all parties as threads of this process); each sample is charged to the thread's innermost
secptune function, or to waiting when that is a receive.

    python benchmarks/pass_profile.py --attention rfa --cell 6x4x24 [--top 30]

Measured on a 2-core, 23 GB machine (2026-11-26, RFA, 6x4x24, another 2-thread job running; a
61 s pass): the dealer's thread was busy 53% of the pass and its two DCF key workers 33%
each, mostly generating function-secret-sharing keys (AES on the CPU); the servers were busy
44% and 49%, mostly in the cosine protocol's finish (13-14% of their samples), DCF
evaluation (AES, 11%) and ring products (5%).
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time

import torch


def sample(counts: collections.Counter, done: threading.Event, period: float = 0.02) -> None:
    me = threading.get_ident()
    while not done.is_set():
        names = {t.ident: t.name.split("-")[0] for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            leaf = None
            f = frame
            while f is not None and leaf is None:
                if "secptune" in f.f_code.co_filename:
                    leaf = f"{f.f_code.co_filename.split('secptune/')[-1]}:{f.f_code.co_name}"
                f = f.f_back
            if leaf is None or leaf.endswith(("_recv", "_worker")):
                leaf = "(waiting)"
            counts[(names.get(ident, "?"), leaf)] += 1
        time.sleep(period)


def main(argv=None) -> int:
    from generation_cost import secure_pass          # benchmarks/generation_cost.py

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attention", default="rfa", choices=("rfa", "softmax"))
    parser.add_argument("--cell", default="6x4x24", metavar="PxBxL")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    P, B, L = (int(v) for v in args.cell.split("x"))
    counts: collections.Counter = collections.Counter()
    with secure_pass(args.attention, P, B, L) as one_pass:
        one_pass()                                                                     # warm-up pass
        done = threading.Event()
        sampler = threading.Thread(target=sample, args=(counts, done), daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        one_pass()
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
    per_thread = collections.Counter()
    for (thread, _), c in counts.items():
        per_thread[thread] += c
    print(f"one pass of {P}x{B}x{L} ({args.attention}): {seconds:.1f} s")
    for thread, total in sorted(per_thread.items()):
        busy = 1 - counts[(thread, "(waiting)")] / total
        print(f"  {thread:12s} busy {100 * busy:5.1f}%")
    print("busiest functions (% of the thread's samples):")
    rows = [(c / per_thread[t], t, leaf) for (t, leaf), c in counts.items() if leaf != "(waiting)"]
    for share, thread, leaf in sorted(rows, reverse=True)[:args.top]:
        print(f"  {100 * share:5.1f}%  {thread:12s} {leaf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
