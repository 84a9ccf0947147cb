"""Strict-JSON encoding of nested training state (arrays, tensors, RNG states).

Search schedulers that keep training state across decisions — PBT's population, the
previous gradient and per-entry step sizes of hypergradient descent — must still serialise
their ``state_dict`` as plain JSON and resume *bit for bit*. :func:`encode_tree` turns a
nested structure of dicts, lists, tuples, numbers, strings, numpy arrays and torch tensors
into JSON data (arrays as base64 of their raw bytes, so nothing is rounded) and
:func:`decode_tree` inverts it.

Example:
    >>> import json, numpy as np
    >>> tree = {"w": np.arange(3.0), "t": (1, float("inf")), 5: None}
    >>> back = decode_tree(json.loads(json.dumps(encode_tree(tree), allow_nan=False)))
    >>> back["w"].tolist(), back["t"], back[5]
    ([0.0, 1.0, 2.0], (1, inf), None)
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import torch

__all__ = ["decode_tree", "encode_tree"]

_TAGS = ("__float__", "__tuple__", "__dict__", "__ndarray__", "__tensor__")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def encode_tree(obj: Any) -> Any:
    """Return ``obj`` as strict-JSON data (see the module docstring for the types)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return x if math.isfinite(x) else {"__float__": repr(x)}
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {"__ndarray__": _b64(arr.tobytes()), "dtype": arr.dtype.str, "shape": arr.shape}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {
            "__tensor__": _b64(raw),
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v) for v in obj]}
    if isinstance(obj, list):
        return [encode_tree(v) for v in obj]
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj)
        if plain:
            return {k: encode_tree(v) for k, v in obj.items()}
        return {"__dict__": [[encode_tree(k), encode_tree(v)] for k, v in obj.items()]}
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON state")


def decode_tree(data: Any) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(data, list):
        return [decode_tree(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__float__" in data:
        return float(data["__float__"])
    if "__tuple__" in data:
        return tuple(decode_tree(v) for v in data["__tuple__"])
    if "__dict__" in data:
        return {_hashable(decode_tree(k)): decode_tree(v) for k, v in data["__dict__"]}
    if "__ndarray__" in data:
        raw = base64.b64decode(data["__ndarray__"])
        dtype = np.dtype(data["dtype"])
        return np.frombuffer(raw, dtype=dtype).reshape(data["shape"]).copy()
    if "__tensor__" in data:
        raw = bytearray(base64.b64decode(data["__tensor__"]))
        dtype = getattr(torch, data["dtype"])
        if not raw:
            return torch.empty(data["shape"], dtype=dtype)
        flat = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
        return flat.reshape(data["shape"]).clone()
    return {k: decode_tree(v) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
