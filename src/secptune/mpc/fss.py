"""Distributed comparison functions (DCF): function secret sharing of x -> beta * [x < alpha].

Construction of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumaresan and Rathee, "Function Secret
Sharing for Mixed-Mode and Fixed-Point Secure Computation" (Eurocrypt 2021), Fig. 1, over
n-bit unsigned inputs with a payload beta in (Z_2^64)^P.  The dealer generates a pair of keys;
each server evaluates its key on a public input and obtains an additive share of the output.
With the input masked by the dealer's random r, this gives a comparison in one online round.

The length-doubling PRG is fixed-key AES in Matyas-Meyer-Oseas mode, H_j(s) = AES_K(s^j)^s^j
(a correlation-robust hash; the usual choice of FSS implementations).  Block j = 0 expands to
the left child's seed and control bit, j = 1 to the right child's, and the next blocks to the
left and right payload words.  Evaluation expands only the child that the input takes.

Key size per comparison and party: n * (128 + 64 P + 2) + 64 P bits of correction words (common
to both parties) plus a 128-bit root seed (each party's own, derived from its PRG seed).

Two implementations give bit-identical keys and shares: native code (`secptune.mpc.native`, built by
the package's install step; each comparison walks its tree in registers, with AES on the CPU's
AES instructions), used where it was built and the CPU has AES-NI; and numpy, level by level
across all comparisons, with AES through `cryptography`, everywhere else or when
SECPTUNE_NATIVE=0.  On a 2-core x86-64 machine the native key generation is 3.8 times and
the evaluation 2.9 times faster (2^17 comparisons of 40 bits; benchmarks/native_kernels.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .native import aes_enabled, kernels
from .prg import aes_ecb

_FIXED_KEY = bytes.fromhex("5365635054756e65204443462d414553")  # public, "SecPTune DCF-AES"
_LSB_CLEAR = np.uint64(0xFFFFFFFFFFFFFFFE)
_ONE = np.uint64(1)
_ZERO = np.uint64(0)


def native_available() -> bool:
    """Whether the native DCF runs here (secptune.mpc.native.aes_enabled)."""
    return aes_enabled()


def _hash(blocks: np.ndarray) -> np.ndarray:
    """Matyas-Meyer-Oseas: AES_K(b) ^ b for each 128-bit block (last axis of 2 words)."""
    return aes_ecb(_FIXED_KEY, blocks) ^ blocks


def _expand(seeds: np.ndarray, payload: int) -> np.ndarray:
    """Both children of each seed, block-major: (2 + P, *seeds.shape); blocks 0 and 1 are
    the left and right seeds, the next P blocks hold the P left payload words then the P
    right ones.  Each block is contiguous, so what follows runs on contiguous arrays."""
    blocks = np.empty((2 + payload,) + seeds.shape, dtype=np.uint64)
    blocks[:] = seeds
    for j in range(1, 2 + payload):
        blocks[j, ..., 0] ^= np.uint64(j)
    return _hash(blocks)


def _split_seed(block: np.ndarray):
    """A hashed block -> (seed with its low bit cleared, control bit)."""
    t = block[..., 0] & _ONE
    s = block.copy()
    s[..., 0] &= _LSB_CLEAR
    return s, t


def _sign(t: np.ndarray) -> np.ndarray:
    """(-1)^t in Z_2^64 for t in {0, 1}."""
    return _ONE - np.uint64(2) * t


def _convert(seed: np.ndarray, payload: int) -> np.ndarray:
    """A leaf seed (N, 2) as P <= 2 group elements (the construction's Convert)."""
    return seed[:, :payload]


@dataclass
class DCFKeys:
    """One party's keys for a batch of N comparisons of n-bit inputs with P-word payloads."""

    party: int
    n_bits: int
    root: np.ndarray       # (N, 2) uint64, this party's own
    cw_seed: np.ndarray    # (n, N, 2) uint64, common
    cw_value: np.ndarray   # (n, N, P) uint64, common
    cw_t: np.ndarray       # (n, N, 2) uint8 in {0, 1}, common
    cw_final: np.ndarray   # (N, P) uint64, common

    @property
    def payload(self) -> int:
        return self.cw_final.shape[1]

    def common(self) -> dict:
        """The correction words, as the dealer sends them (control bits packed)."""
        return {
            "cw_seed": self.cw_seed,
            "cw_value": self.cw_value,
            "cw_t": np.packbits(self.cw_t.reshape(-1)),
            "cw_final": self.cw_final,
        }

    def part(self, rows: slice) -> "DCFKeys":
        """The keys of a contiguous range of the comparisons."""
        return DCFKeys(self.party, self.n_bits, self.root[rows], self.cw_seed[:, rows],
                       self.cw_value[:, rows], self.cw_t[:, rows], self.cw_final[rows])

    @classmethod
    def from_common(cls, party: int, n_bits: int, root: np.ndarray, common: dict) -> "DCFKeys":
        n, count = common["cw_seed"].shape[:2]
        bits = np.unpackbits(common["cw_t"], count=n * count * 2).reshape(n, count, 2)
        return cls(party, n_bits, root, common["cw_seed"], common["cw_value"], bits,
                   common["cw_final"])


#: comparisons per work item: chunks keep each level's arrays in cache, and let the dealer's
#: key generation run on every core (numpy and AES release the GIL)
CHUNK = 1 << 15
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="dcf")


def _chunks(count: int) -> list[slice]:
    return [slice(start, min(start + CHUNK, count)) for start in range(0, max(count, 1), CHUNK)]


def dcf_keygen(alpha: np.ndarray, beta: np.ndarray, n_bits: int,
               root0: np.ndarray, root1: np.ndarray) -> tuple[DCFKeys, DCFKeys]:
    """Keys for f(x) = beta * [x < alpha] on n-bit unsigned x.

    alpha: (N,) uint64 below 2^n_bits; beta: (N, P) uint64 with P in {1, 2} (or (N,));
    root0, root1: (N, 2) uint64 root seeds of the two parties.
    """
    if not 1 <= n_bits <= 64:
        raise ValueError("n_bits must be in [1, 64]")
    alpha = np.asarray(alpha, dtype=np.uint64).reshape(-1)
    count = alpha.shape[0]
    beta = np.asarray(beta, dtype=np.uint64).reshape(count, -1)
    payload = beta.shape[1]
    if not 1 <= payload <= 2:
        raise ValueError("a DCF payload holds 1 or 2 ring elements")
    if n_bits < 64 and count and int(alpha.max()) >> n_bits:
        raise ValueError(f"alpha does not fit in {n_bits} bits")
    words = DCFKeys(0, n_bits, np.asarray(root0, dtype=np.uint64),
                    np.empty((n_bits, count, 2), dtype=np.uint64),
                    np.empty((n_bits, count, payload), dtype=np.uint64),
                    np.empty((n_bits, count, 2), dtype=np.uint8),
                    np.empty((count, payload), dtype=np.uint64))
    root0 = np.ascontiguousarray(root0, dtype=np.uint64)
    root1 = np.ascontiguousarray(root1, dtype=np.uint64)
    if native_available():
        beta = np.ascontiguousarray(beta)
        work = (lambda sl: kernels.keygen(_FIXED_KEY, alpha, beta, payload, n_bits, root0, root1, words.cw_seed,
                                          words.cw_value, words.cw_t, words.cw_final, sl.start, sl.stop))
    else:
        work = (lambda sl: _keygen(alpha[sl], beta[sl], n_bits, root0[sl], root1[sl], words.part(sl)))
    # each chunk writes its slice of the correction words
    list(_POOL.map(work, _chunks(count)))
    other = DCFKeys(1, n_bits, np.asarray(root1, dtype=np.uint64), words.cw_seed, words.cw_value,
                    words.cw_t, words.cw_final)
    return words, other


def _keygen(alpha: np.ndarray, beta: np.ndarray, n_bits: int,
            root0: np.ndarray, root1: np.ndarray, words: DCFKeys) -> None:
    """Fill `words` (a slice of the batch's correction words) for these comparisons."""
    count, payload = beta.shape
    # both parties' trees side by side: axis 1 is the party
    s = np.stack([root0, root1], axis=1).astype(np.uint64)
    s[..., 0] &= _LSB_CLEAR
    t = np.zeros((count, 2), dtype=np.uint64)
    t[:, 1] = 1
    v_alpha = np.zeros((count, payload), dtype=np.uint64)
    cw_seed, cw_value, cw_t = words.cw_seed, words.cw_value, words.cw_t
    for level in range(n_bits):
        bit = (alpha >> np.uint64(n_bits - 1 - level)) & _ONE
        right = np.uint64(0) - bit                      # all ones where alpha goes right
        out = _expand(s, payload)                       # (2 + P, N, party, 2)
        t_l = out[0, :, :, 0] & _ONE                    # (N, party)
        t_r = out[1, :, :, 0] & _ONE
        s_l, s_r = out[0], out[1]                       # (N, party, 2)
        s_l[..., 0] &= _LSB_CLEAR
        s_r[..., 0] &= _LSB_CLEAR
        value_words = np.moveaxis(out[2:], 0, -2).reshape(count, 2, 2 * payload)
        v_l, v_r = value_words[..., :payload], value_words[..., payload:]      # (N, party, P)
        # XOR-select: keep = the child alpha takes, lose = the other
        r3 = right[:, None, None]
        s_diff = s_l ^ s_r
        s_keep = s_diff & r3
        s_keep ^= s_l
        s_cw = s_keep[:, 0] ^ s_keep[:, 1]
        s_cw ^= s_diff[:, 0]
        s_cw ^= s_diff[:, 1]                            # = lose0 ^ lose1
        v_diff = v_l ^ v_r
        v_keep = v_diff & r3
        v_keep ^= v_l
        v_lose = v_keep ^ v_diff
        sign1 = _sign(t[:, 1])[:, None]
        v_cw = v_lose[:, 1] - v_lose[:, 0]
        v_cw -= v_alpha
        v_cw += beta * bit[:, None]
        v_cw *= sign1
        v_alpha += v_keep[:, 0] - v_keep[:, 1] + sign1 * v_cw
        t_cw_l = t_l[:, 0] ^ t_l[:, 1] ^ bit ^ _ONE
        t_cw_r = t_r[:, 0] ^ t_r[:, 1] ^ bit
        cw_seed[level] = s_cw
        cw_value[level] = v_cw
        cw_t[level, :, 0] = t_cw_l
        cw_t[level, :, 1] = t_cw_r
        t_cw_keep = t_cw_l ^ ((t_cw_l ^ t_cw_r) & right)
        t_keep = t_l ^ ((t_l ^ t_r) & right[:, None])
        s = s_cw[:, None, :] & (np.uint64(0) - t)[:, :, None]
        s ^= s_keep
        t = t_keep ^ (t & t_cw_keep[:, None])
    conv = s[..., :payload]
    words.cw_final[:] = _sign(t[:, 1])[:, None] * (conv[:, 1] - conv[:, 0] - v_alpha)


def dcf_eval(key: DCFKeys, x: np.ndarray) -> np.ndarray:
    """This party's additive share, (N, P) uint64, of beta * [x < alpha] for n-bit unsigned x."""
    x = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    if native_available():
        out = np.empty((x.shape[0], key.payload), dtype=np.uint64)
        words = (np.ascontiguousarray(a) for a in (key.root, key.cw_seed, key.cw_value, key.cw_t, key.cw_final))
        kernels.evaluate(_FIXED_KEY, key.party, key.n_bits, key.payload, *words, x, out, 0, x.shape[0])
        return out
    # in the calling thread: the two servers evaluate at the same time, one core each;
    # chunks keep each level's arrays in cache
    chunks = _chunks(x.shape[0])
    if len(chunks) == 1:
        return _eval(key, x)
    return np.concatenate([_eval(key.part(sl), x[sl]) for sl in chunks])


def _eval(key: DCFKeys, x: np.ndarray) -> np.ndarray:
    count, payload = x.shape[0], key.payload
    s = key.root.astype(np.uint64)
    s[:, 0] &= _LSB_CLEAR
    t = np.full(count, key.party, dtype=np.uint64)
    total = np.zeros((count, payload), dtype=np.uint64)
    rows = np.arange(count)
    for level in range(key.n_bits):
        right = (x >> np.uint64(key.n_bits - 1 - level)) & _ONE
        # expand only what the input's branch needs: its child seed and its payload words
        if payload == 1:
            tweaks = np.stack([right, np.full(count, 2, np.uint64)], axis=1)
        else:
            tweaks = np.stack([right, right + np.uint64(2)], axis=1)
        blocks = np.repeat(s[:, None, :], 2, axis=1)
        blocks[:, :, 0] ^= tweaks
        out = _hash(blocks)
        s_next, t_next = _split_seed(out[:, 0])
        v = out[rows, 1, right.astype(np.intp)][:, None] if payload == 1 else out[:, 1]
        t_cw = key.cw_t[level][rows, right.astype(np.intp)].astype(np.uint64)
        s = s_next ^ (key.cw_seed[level] * t[:, None])
        total += v + key.cw_value[level] * t[:, None]
        t = t_next ^ (t & t_cw)
    total += _convert(s, payload) + key.cw_final * t[:, None]
    return total if key.party == 0 else np.uint64(0) - total
