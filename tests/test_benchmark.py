"""`secptune.mpc.benchmark.measure`: what it times and counts, an operation's set-up (not
counted) and its own inputs."""

from __future__ import annotations

import torch

from secptune.mpc.benchmark import Operation, measure
from secptune.mpc.protocols import prepare

OPEN = 16          # online bytes per opened ring element (both directions of the server link)


def test_setup_is_not_counted_and_draw_gives_the_inputs():
    x_shape, w_shape = (3, 5), (5, 4)
    drawn = []

    def draw(gen):
        xs = [torch.randn(*x_shape, generator=gen, dtype=torch.float64),
              torch.randn(*w_shape, generator=gen, dtype=torch.float64) * 0.5]
        drawn.append(xs)
        return xs

    product = lambda server, x, w: (x @ w).truncate()          # noqa: E731
    fresh = measure(Operation("fresh", [x_shape, w_shape], 1.0, product, lambda x, w: x @ w), runs=1)
    prepared = measure(Operation("prepared", [], 1.0, product, lambda x, w: x @ w,
                                 setup=lambda server, x, w: (x, prepare(w)), draw=draw), runs=1)
    assert len(drawn) == 2                                       # the warm-up and one run
    # a product opens both operands, then truncates its result in one more opening; with
    # the weight prepared in the (uncounted) set-up, only x is opened
    truncation = fresh.online_bytes - OPEN * (3 * 5 + 5 * 4)
    assert truncation > 0
    assert prepared.online_bytes == OPEN * 3 * 5 + truncation
    assert prepared.rounds == fresh.rounds
    for m in (fresh, prepared):
        assert m.max_abs_error < 1e-3
        assert m.seconds > 0 and m.online_seconds > 0
