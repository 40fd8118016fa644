"""The operations a transformer needs, on plaintext tensors or on shared tensors.

Every function takes either torch tensors (the plaintext reference: float64, exact formulas)
or `SharedTensor`s (the servers' view: the engine's protocols), and weights of the matching
kind: float tensors for the plaintext path; `PreparedOperand`s (matrices, LayerNorm scales)
and `SharedTensor`s (biases) for the secure path.  The model code in `models/` calls only
these, so one transformer runs on both: there is no second copy of it for MPC.

Where the secure version approximates, the plaintext version computes the exact function,
so comparing the two measures the protocols' error and nothing else.  Where the secure
version has an input range (the reciprocal and inverse square roots), both clamp their input
into it, and the GeLU's series reflects beyond a calibrated bound on both: the two paths
compute the same function on every input, in range or not.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ..mpc import protocols
from ..mpc.protocols.gelu import channel_series, erf_series_value, series_for_bound
from ..mpc.protocols.inverse import clamped_range
from ..mpc.protocols.truncation import truncate_together
from ..mpc.shared import SharedTensor
from ..mpc.shared import cat as shared_cat


#: the secure LayerNorm's variance range (log2) when no calibrated one is given
DEFAULT_VAR_RANGE = (-16.0, 14.0)


def is_shared(x) -> bool:
    return isinstance(x, SharedTensor)


def linear(x, weight, bias=None):
    """x @ weight + bias, weight stored (in_features, out_features)."""
    y = protocols.matmul(x, weight) if is_shared(x) else x @ weight
    return y if bias is None else y + bias


def matmul(a, b):
    """a @ b for two activations (attention scores, attention-weighted values)."""
    return protocols.matmul(a, b) if is_shared(a) else a @ b


def mul(a, b):
    return protocols.mul(a, b) if is_shared(a) else a * b


def settle(*xs):
    """Carry out the pending truncations of several shared tensors in one round (no-op on
    plaintext): before values that feed several products, or before LayerNorm."""
    out = truncate_together(*xs) if xs and is_shared(xs[0]) else xs
    return out if len(out) != 1 else out[0]


def layer_norm(x, weight, bias, eps: float, var_range: tuple[float, float] | None = None):
    """LayerNorm; the secure version's inverse square root is valid for a variance (plus eps)
    in [2^lo, 2^hi] = `var_range` (a calibrated range: fewer comparisons) or a wide default,
    and clamps a variance outside it into it; so does the plaintext version (the same
    function: torch's LayerNorm inside the range)."""
    lo, hi = var_range or DEFAULT_VAR_RANGE
    if is_shared(x):
        return protocols.layer_norm(settle(x), weight, bias, eps, lo, hi)
    # the secure version clamps the sum of squares plus D eps into its (octave) range
    D = x.shape[-1]
    d = x - x.mean(-1, keepdim=True)
    total = _clamp((d * d).sum(-1, keepdim=True) + D * eps, lo + math.log2(D), hi + math.log2(D))
    y = d * (total.rsqrt() * math.sqrt(D))
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def gelu(x, bound_log2=None):
    """GeLU, erf form.  The secure version's sine series is valid for |x| <= 2^bound_log2 (a
    calibrated bound per site, `models/calibration.py`; or a sequence of them, one per
    channel of x's last dimension), with a max abs error of 3e-5 inside; beyond it the series
    reflects (erf falls back from 1).  With a bound the plaintext version is torch's exact
    GeLU inside it and the same reflected series beyond: the two paths compute the same
    function on every input.  Without one the secure series is valid for |x| <= 34
    (MiniLM's largest GeLU input on real sentences is about 27) and the plaintext version is
    torch's GeLU (the uncalibrated reference)."""
    if bound_log2 is not None and not isinstance(bound_log2, (int, float)):
        return _gelu_by_channels(x, tuple(2.0 ** b for b in bound_log2))
    half_period, harmonics = gelu_series(bound_log2)
    if is_shared(x):
        return protocols.gelu(x, half_period, harmonics)
    exact = torch.nn.functional.gelu(x)
    valid = 2 * half_period - 6
    if bound_log2 is None or bool((x.abs() <= valid).all()):
        return exact
    return torch.where(x.abs() <= valid, exact, x / 2 * (1 + erf_series_value(x, half_period, harmonics)))


def _gelu_by_channels(x, bounds: tuple[float, ...]):
    """GeLU with a bound on |x| per channel (protocols.gelu_by_channels); in plaintext each
    channel's group exact inside its series' valid range and that series beyond."""
    if is_shared(x):
        return protocols.gelu_by_channels(x, bounds)
    if len(bounds) != x.shape[-1]:
        raise ValueError(f"{len(bounds)} channel bounds for {x.shape[-1]} channels")
    exact = torch.nn.functional.gelu(x)
    out = None
    for half_period, harmonics, columns in channel_series(bounds):
        columns = columns.to(x.device)
        part = x[..., columns]
        beyond = part.abs() > 2 * half_period - 6
        if bool(beyond.any()):
            out = exact.clone() if out is None else out
            series = part / 2 * (1 + erf_series_value(part, half_period, harmonics))
            out[..., columns] = torch.where(beyond, series, exact[..., columns])
    return exact if out is None else out


def gelu_series(bound_log2: float | None) -> tuple[float, int]:
    """(half_period, harmonics) of the secure GeLU at a site's calibrated bound (see gelu)."""
    return series_for_bound(None if bound_log2 is None else 2.0 ** bound_log2)


def softmax(x, dim: int = -1):
    return protocols.softmax(x, dim) if is_shared(x) else torch.softmax(x, dim)


def sum_of_squares(x, dim: int = -1):
    """sum over dim of x^2 (keepdim)."""
    if is_shared(x):
        return protocols.square(x).sum(dim, keepdim=True)
    return (x * x).sum(dim, keepdim=True)


def rsqrt(x, lo: float, hi: float):
    """1 / sqrt(x) for x in [2^lo, 2^hi], x clamped into the range outside it (the secure
    version's range rounded out to octaves; exact in plaintext)."""
    return protocols.rsqrt(settle(x), lo, hi) if is_shared(x) else _clamp(x, lo, hi).rsqrt()


def reciprocal(x, lo: float, hi: float, bounded: bool = False):
    """1 / x for x in [2^lo, 2^hi], x clamped into the range outside it (as rsqrt): a
    non-positive RFA normaliser gives 1 / 2^lo on both paths, never a division by ~0.
    `bounded`: x never exceeds 2^hi by construction (a softmax's normaliser), so the secure
    clamp needs no headroom above the range (fewer comparison bits)."""
    if is_shared(x):
        return protocols.reciprocal(settle(x), lo, hi, **({"slack": 0} if bounded else {}))
    return 1.0 / _clamp(x, lo, hi)


def _clamp(x, lo: float, hi: float):
    lo, hi = clamped_range(lo, hi)
    return x.clamp(2.0 ** lo, 2.0 ** hi)


def exp(x, max_input: float = 0.0, min_input: float | None = None):
    """exp(x) for x <= max_input (the secure version clips below -64, or, given min_input >=
    -144, skips the clip and is meaningless below min_input)."""
    return protocols.exp(settle(x), max_input, min_input) if is_shared(x) else torch.exp(x)


def row_max(x, bound: float | None = None, resolution: float | None = None):
    """max over the last dimension (keepdim).  Under MPC, given a public `bound` on the
    differences within a row and a `resolution`, the comparisons cover that range at that
    resolution (protocols.maximum): the result may be up to ceil(log2 n) * resolution below
    the maximum, for less key material (the plaintext path is exact)."""
    if is_shared(x):
        return protocols.maximum(x, -1, keepdim=True, bound=bound, resolution=resolution)
    return x.amax(-1, keepdim=True)


def cat(tensors, dim: int):
    return shared_cat(tensors, dim) if is_shared(tensors[0]) else torch.cat(tensors, dim)


def labelled(x, name: str):
    """Count the secure cost of a block under `name` (attention, ffn, ...); nothing in plaintext."""
    return x.server.labelled(name) if is_shared(x) else nullcontext()
