"""What a payload looks like on the wire: a small JSON header and the raw tensor buffers.

A message from a peer is data, never code: nothing here unpickles.  `encode(payload)` returns
(header bytes, buffers): the header is JSON describing the payload's structure, and each
tensor, numpy array or bytes object is one buffer (a zero-copy view of its memory, sent as
its own zmq frame).  `decode(header, frames)` rebuilds the payload, reading every buffer into
a fresh writable tensor or array (zmq's received frames are read-only).

Encoded values: None, bool, int, float, str as themselves; lists, tuples (torch.Size too)
and dicts (any encodable keys) as tagged JSON objects; torch tensors and numpy arrays of
numeric dtypes and bytes as buffers.  Anything else is refused (`WireError`), on both sides.
"""

from __future__ import annotations

import json

import numpy as np
import torch


class WireError(ValueError):
    """A payload that cannot be sent, or a message that is not a valid payload."""


_TORCH_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.int64, torch.int32, torch.int16, torch.int8,
                                                           torch.uint8, torch.bool, torch.float64, torch.float32,
                                                           torch.float16)}
_NUMPY_DTYPES = {"int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool", "float64",
                 "float32", "float16"}


def to_tree(payload) -> tuple[object, list]:
    """(a JSON-able description of the payload, its buffers)."""
    buffers: list = []
    return _encode(payload, buffers), buffers


def from_tree(tree, frames: list):
    check_nesting(tree, MAX_NESTING)
    return _decode(tree, frames)


#: the deepest nesting of lists and dicts a header may have: real payloads stay under 10, and
#: decoding recurses once per level
MAX_NESTING = 64


def check_nesting(tree, limit: int = MAX_NESTING) -> None:
    """Raise `WireError` if `tree` (parsed JSON) nests deeper than `limit` (checked without
    recursion, so that any depth is refused, not a RecursionError)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                raise WireError(f"a message header nested deeper than {limit} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))


def encode(payload) -> tuple[bytes, list]:
    tree, buffers = to_tree(payload)
    return json.dumps(tree, separators=(",", ":")).encode(), buffers


def _encode(obj, buffers: list):
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return {"f": repr(float(obj))} if not np.isfinite(obj) else float(obj)
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        name = str(t.dtype).removeprefix("torch.")
        if name not in _TORCH_DTYPES:
            raise WireError(f"cannot send a tensor of dtype {t.dtype}")
        t = t.contiguous()
        buffers.append(memoryview(t.numpy()).cast("B") if t.numel() else b"")
        return {"T": len(buffers) - 1, "dtype": name, "shape": list(t.shape)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _NUMPY_DTYPES:
            raise WireError(f"cannot send an array of dtype {obj.dtype}")
        a = np.ascontiguousarray(obj)
        buffers.append(memoryview(a).cast("B") if a.size else b"")
        return {"N": len(buffers) - 1, "dtype": a.dtype.name, "shape": list(a.shape)}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        buffers.append(obj)
        return {"B": len(buffers) - 1}
    if isinstance(obj, list):
        return {"L": [_encode(o, buffers) for o in obj]}
    if isinstance(obj, tuple):             # torch.Size is a tuple
        return {"U": [_encode(o, buffers) for o in obj]}
    if isinstance(obj, dict):
        return {"D": [[_encode(k, buffers), _encode(v, buffers)] for k, v in obj.items()]}
    raise WireError(f"cannot send a {type(obj).__name__} (tensors, arrays, bytes, numbers, strings, "
                    f"lists, tuples and dicts only)")


def decode(header: bytes, frames: list):
    try:
        tree = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"a message header that is not JSON ({type(exc).__name__})") from None
    return from_tree(tree, frames)


def _buffer(frames: list, index) -> memoryview:
    if not isinstance(index, int) or not 0 <= index < len(frames):
        raise WireError(f"a message refers to buffer {index!r} of {len(frames)}")
    frame = frames[index]
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def _array(frames, tree, dtype) -> np.ndarray:
    shape = tree.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError(f"a malformed shape {shape!r}")
    buf = _buffer(frames, tree[next(iter(tree))])
    count = int(np.prod(shape)) if shape else 1
    if len(buf) != count * dtype.itemsize:
        raise WireError(f"a buffer of {len(buf)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape).copy()


def _decode(tree, frames):
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if not isinstance(tree, dict) or not tree:
        raise WireError(f"a malformed message element {type(tree).__name__}")
    tag = next(iter(tree))
    if tag == "T":
        name = tree.get("dtype")
        if name not in _TORCH_DTYPES:
            raise WireError(f"a tensor of unknown dtype {name!r}")
        dtype = _TORCH_DTYPES[name]
        np_dtype = np.dtype("bool") if dtype == torch.bool else torch.empty(0, dtype=dtype).numpy().dtype
        return torch.from_numpy(_array(frames, tree, np_dtype))
    if tag == "N":
        if tree.get("dtype") not in _NUMPY_DTYPES:
            raise WireError(f"an array of unknown dtype {tree.get('dtype')!r}")
        return _array(frames, tree, np.dtype(tree["dtype"]))
    if tag == "B":
        return bytes(_buffer(frames, tree["B"]))
    if tag == "f":
        return float(tree["f"])
    if tag == "L":
        return [_decode(o, frames) for o in tree["L"]]
    if tag == "U":
        return tuple(_decode(o, frames) for o in tree["U"])
    if tag == "D":
        return {_decode(k, frames): _decode(v, frames) for k, v in tree["D"]}
    raise WireError(f"a message element tagged {tag!r}")
