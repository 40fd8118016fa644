"""GeLU(x) = x / 2 * (1 + erf(x / sqrt 2)) with erf as a sine series: no comparison at all.

erf(x / sqrt 2) on [-L, L], reflected about x = L (where erf has saturated, so the reflection
is smooth), is an odd function of period 4L that is symmetric about L: its Fourier series has
only odd sine harmonics, sum_k b_k sin(k pi x / 2L), k = 1, 3, 5, ...  and, being smooth,
converges fast.  The series equals erf(x / sqrt 2) for |x| <= 2L - 6 (to 1e-8): inside that
range GeLU is approximated with a max abs error of 3.4e-6 for L = 16 and K = 24 harmonics
(before fixed-point rounding); beyond it the reflection shows and the error grows.

Cost: 2 rounds plus the truncation its consumer folds in.  Round 1 opens x for the whole
series at once (Pi_cosine, trig.py); round 2 multiplies x by the series (folding the series'
truncation).  The dealer sends server 1 2K ring elements per element for the series and, for
the product, three ring elements and four narrow ones (a truncation mask's top bit and its
products, in the bytes of the operands' shifts: arithmetic.py).  The result is pending (frac
16 + 24 + 1).

Per channel (`gelu_by_channels`): a bound for each of x's last-dimension columns (a
feed-forward layer's channels: most channels' inputs stay far below the layer's largest),
the columns grouped by bound, each group its own series (half period and harmonics from its
bound) in the same round.  The online bytes and rounds are those of one series; the dealer
sends 2 K_c ring elements per element of channel c instead of 2 K for the layer's largest.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..shared import SharedTensor
from .arithmetic import mul
from .trig import sine_series, sine_series_by_columns

SERIES_FRAC = 24


@functools.cache
def erf_series(half_period: float = 16.0, harmonics: int = 24):
    """(omega, ks, b_k) with erf(x / sqrt 2) ~ sum_k b_k sin(k omega x) for |x| <= 2L - 6
    (computed once per series: the forward, its plaintext twin and the backward share it)."""
    L = half_period
    n = 1 << 16
    x = (np.arange(n) + 0.5) / n * 4 * L - 2 * L
    target = np.where(np.abs(x) <= L, _erf(x / math.sqrt(2)),
                      np.sign(x) * _erf((2 * L - np.abs(x)) / math.sqrt(2)))
    ks = np.arange(1, 2 * harmonics, 2)
    omega = math.pi / (2 * L)
    b = np.array([2 * np.mean(target * np.sin(k * omega * x)) for k in ks])
    return omega, tuple(int(k) for k in ks), tuple(float(v) for v in b)


def _erf(x: np.ndarray) -> np.ndarray:
    return torch.special.erf(torch.from_numpy(x)).numpy()


#: the default GeLU series (valid for |x| <= 34) where no calibrated bound is given
DEFAULT_HALF_PERIOD, DEFAULT_HARMONICS = 20.0, 28


def series_for_bound(bound: float | None) -> tuple[float, int]:
    """(half_period, harmonics) of an erf series valid for |x| <= `bound` (the default
    series for None): L = bound / 2 + 3 and K = ceil(1.5 L) odd harmonics keep GeLU's max
    abs error at or below 3e-5 inside (1.9e-6 at L = 10, 2.9e-5 at L = 67).  The dealer's
    bytes grow with K, the online bytes and rounds do not."""
    if bound is None:
        return DEFAULT_HALF_PERIOD, DEFAULT_HARMONICS
    half_period = max(float(bound), 4.0) / 2 + 3
    return half_period, math.ceil(1.5 * half_period)


def erf_series_value(x: torch.Tensor, half_period: float, harmonics: int) -> torch.Tensor:
    """The series in plaintext (what the secure GeLU computes, to its rounding), in x's dtype."""
    omega, ks, b = erf_series(half_period, harmonics)
    k = torch.tensor(ks, dtype=x.dtype, device=x.device)
    w = torch.tensor(b, dtype=x.dtype, device=x.device)
    return (torch.sin(x.unsqueeze(-1) * (k * omega)) * w).sum(-1)


@functools.cache
def channel_series(bounds: tuple[float, ...]) -> list[tuple[float, int, torch.Tensor]]:
    """(half_period, harmonics, columns) per distinct series among per-column bounds on |x|
    (`series_for_bound` of each): the columns that share a series, in increasing order
    (computed once per set of bounds: every pass of a model reuses its sites')."""
    groups: dict[tuple[float, int], list[int]] = {}
    for column, bound in enumerate(bounds):
        groups.setdefault(series_for_bound(bound), []).append(column)
    return [(half_period, harmonics, torch.tensor(columns, dtype=torch.long))
            for (half_period, harmonics), columns in sorted(groups.items())]


def gelu(x: SharedTensor, half_period: float = 16.0, harmonics: int = 24) -> SharedTensor:
    """GeLU, exact-erf form, for |x| <= 2 * half_period - 6; pending truncation."""
    omega, ks, b = erf_series(half_period, harmonics)
    with x.server.labelled("gelu"):
        xs = x.truncate() if x.frac > 40 else x
        return _times_half(x, sine_series(xs, omega, ks, b, SERIES_FRAC, SERIES_FRAC))


def gelu_by_channels(x: SharedTensor, bounds: tuple[float, ...]) -> SharedTensor:
    """GeLU with a bound on |x| per column of x's last dimension (`bounds`, one per column;
    each column's series valid for |x| <= its bound, as `gelu` at series_for_bound's
    half period and harmonics); pending truncation."""
    if len(bounds) != x.shape[-1]:
        raise ValueError(f"{len(bounds)} channel bounds for {x.shape[-1]} channels")
    series = []
    for half_period, harmonics, columns in channel_series(tuple(float(b) for b in bounds)):
        omega, ks, b = erf_series(half_period, harmonics)
        series.append((columns.to(x.device), omega, ks, b))
    with x.server.labelled("gelu"):
        xs = x.truncate() if x.frac > 40 else x
        return _times_half(x, sine_series_by_columns(xs, series, SERIES_FRAC, SERIES_FRAC))


def _times_half(x: SharedTensor, erf: SharedTensor) -> SharedTensor:
    """(x + x erf) / 2, x times the series folding its truncation."""
    x_erf = mul(x, erf, x.base_frac, SERIES_FRAC)
    total = x.rescale(x_erf.frac) + x_erf
    return total.reinterpret(total.frac + 1)
