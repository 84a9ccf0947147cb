"""The ``.msched`` policy file: an exported RL policy that loads with plain torch, no pickle.

A policy file is one `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its
tensors are the policy network's parameters (float32); its ``__metadata__`` holds a single
entry, ``"metasched"``, whose value is a JSON header describing everything else, stored in
canonical form (:func:`canonical_json`: sorted keys, no whitespace, ASCII), so any edit of the
header text is detected:

=================  ===========================================================================
key                value
=================  ===========================================================================
format             ``"metasched-policy"``
format_version     ``2`` (int; readers refuse versions they do not know). Version 1 held
                   policies over the ``-v0`` envs' 12 observation features; version 2 (the
                   ``-v1`` envs) has 11, with the stability-bound feature on one scale
algo               the algorithm that trained the policy (``"ppo"``, ``"dqn"``, ...)
env_id             the Gymnasium id it was trained on (``"metasched/NMF-v1"``)
env_kwargs         every keyword of that env (``action``, ``budget``, ``steps_per_action``,
                   ``lr_range``, ``init_lr``, ``clip``, ``kappa``, ...)
decision_interval  inner steps per decision (the env's ``steps_per_action``)
observation        ``{"shape": [F], "names": [...] | null, "low": [...], "high": [...]}``
action             ``{"mode": m, "space": "discrete", "n": k}`` or
                   ``{"mode": m, "space": "box", "shape": [...], "low": [...], "high": [...]}``
network            ``{"input_dim": F, "layers": [...], "head": {...}}`` (below)
obs_norm           ``null`` or ``{"mean": [...], "var": [...], "epsilon": e, "clip_obs": c}``:
                   observations become ``clip((obs - mean) / sqrt(var + e), -c, c)`` (float64
                   arithmetic, then float32), as SB3's ``VecNormalize`` computes them
versions           ``metasched``, ``torch``, ``safetensors``, ``numpy``, ``python``,
                   ``gymnasium``, ``stable_baselines3`` (and ``sb3_contrib``) at export
created            ISO-8601 UTC time of the export
extra              optional JSON data of the exporter (run directory, timesteps, ...)
checksum           sha256 hex digest, see :func:`compute_checksum`
=================  ===========================================================================

``network.layers`` is applied in order to the (normalised) observation:

* ``{"type": "linear", "weight": name, "bias": name | null}`` — ``x @ W.T + b``;
* activations ``{"type": "tanh" | "relu" | "sigmoid" | "silu" | "selu"}``,
  ``{"type": "elu", "alpha": a}``, ``{"type": "leaky_relu", "negative_slope": s}``,
  ``{"type": "gelu", "approximate": "none" | "tanh"}``,
  ``{"type": "hardtanh", "min_val": lo, "max_val": hi}``,
  ``{"type": "softplus", "beta": b, "threshold": t}``;
* at most one ``{"type": "lstm", "input_size": i, "hidden_size": h, "num_layers": k,
  "bias": true, "params": {"weight_ih_l0": name, "weight_hh_l0": name, "bias_ih_l0": name,
  "bias_hh_l0": name, ...}}`` (torch ``nn.LSTM`` layout, sequence length one per call). Its
  state ``(h, c)``, each ``(num_layers, n, hidden_size)`` float32, is carried between calls
  by the caller and zeroed where ``episode_start`` is true (as sb3-contrib's RecurrentPPO).

``network.head`` turns the last output into actions:

* ``{"type": "argmax", "of": "probs"}`` — argmax of the softmax of logits (the mode of
  torch's ``Categorical``; PPO/A2C/RecurrentPPO with a Discrete action space);
* ``{"type": "argmax", "of": "q_values"}`` — greedy action of Q-values (DQN);
* ``{"type": "gaussian_mean"}`` — the Gaussian mean, clipped to the action Box (PPO/A2C
  continuous);
* ``{"type": "tanh_rescale"}`` — ``tanh`` then rescaled from [-1, 1] to the Box (SAC, TD3,
  squashed gSDE).

Loading never unpickles anything and never imports Stable-Baselines3; every problem with a
file raises :class:`~metasched.errors.ExportError` with a one-line message naming the file.

Example:
    >>> import tempfile, os, torch
    >>> from metasched.policyfile import write_policy, load_policy, minimal_header
    >>> h = minimal_header(input_dim=2, action_mode="discrete3")  # 3 Q-values, one linear layer
    >>> h["network"]["layers"] = [{"type": "linear", "weight": "w", "bias": None}]
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.msched")
    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    >>> _ = write_policy(path, {"w": w}, h)
    >>> load_policy(path).predict(np.array([[3.0, 1.0], [0.0, 2.0]], dtype=np.float32))[0]
    array([0, 1])
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from metasched.actions import ACTION_MODES, DISCRETE_FACTORS
from metasched.atomic import write_bytes
from metasched.errors import ExportError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEYS",
    "PolicyFile",
    "canonical_json",
    "check_obs_norm",
    "compute_checksum",
    "encode_policy",
    "load_policy",
    "minimal_header",
    "write_policy",
]

FORMAT = "metasched-policy"
FORMAT_VERSION = 2
#: Keys every header must have (``extra`` is optional).
HEADER_KEYS: tuple[str, ...] = (
    "format",
    "format_version",
    "algo",
    "env_id",
    "env_kwargs",
    "decision_interval",
    "observation",
    "action",
    "network",
    "obs_norm",
    "versions",
    "created",
    "checksum",
)
_METADATA_KEY = "metasched"
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_TENSOR_DTYPE = torch.float32

RNNState = tuple[np.ndarray, np.ndarray]


class _Invalid(ValueError):
    """Internal: a problem with a file; becomes an ExportError naming the file."""


# -- checksum and encoding -------------------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    """Return ``obj`` as canonical JSON bytes (sorted keys, no spaces, ASCII, no NaN)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def compute_checksum(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """Return the sha256 hex digest a policy file stores under ``checksum``.

    The digest covers :func:`canonical_json` of the header without its ``checksum`` key,
    then, for every tensor in sorted name order, the canonical JSON of
    ``[name, dtype, shape]`` (dtype as torch names it, e.g. ``"float32"``), the byte length
    of its data as 8 little-endian bytes, and the data itself (C order, little-endian).
    """
    digest = hashlib.sha256()
    digest.update(canonical_json({k: v for k, v in header.items() if k != "checksum"}))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.numpy().tobytes()
        dtype = str(t.dtype).removeprefix("torch.")
        digest.update(canonical_json([name, dtype, list(t.shape)]))
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise ExportError(f"tensors must map names to torch tensors, got {name!r}")
        out[name] = t.detach().to(device="cpu", dtype=_TENSOR_DTYPE).contiguous().clone()
    return out


def encode_policy(tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any]) -> bytes:
    """Return the bytes of a policy file (low level: the header is not validated).

    Tensors are stored as float32; ``checksum`` is computed and set. Use
    :func:`write_policy` to write a file: it validates the result first.
    """
    tens = _prepare_tensors(tensors)
    head = {k: v for k, v in dict(header).items() if k != "checksum"}
    try:
        canonical_json(head)
    except (TypeError, ValueError) as e:
        raise ExportError(f"policy header is not strict JSON data: {e}") from None
    head = json.loads(canonical_json(head))  # tuples -> lists, exactly as a reader sees it
    head["checksum"] = compute_checksum(head, tens)
    meta = {_METADATA_KEY: canonical_json(head).decode("ascii")}
    return safetensors.torch.save(tens, metadata=meta)


def write_policy(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any]
) -> Path:
    """Validate and atomically write a policy file; return its path.

    The bytes are decoded again exactly as :func:`load_policy` would before anything touches
    the disk, so a file that was written always loads. The write goes to a temporary file in
    the same directory, is fsynced and then renamed over ``path``.

    Raises:
        ExportError: when the header or tensors do not form a loadable policy, or the file
            cannot be written.
    """
    path = Path(path)
    data = encode_policy(tensors, header)
    try:
        _decode(data)
    except _Invalid as e:
        raise ExportError(f"refusing to write policy file {str(path)!r}: {e}") from None
    try:
        write_bytes(path, data)
    except OSError as e:
        raise ExportError(f"cannot write policy file {str(path)!r}: {e.strerror or e}") from None
    return path


def minimal_header(*, input_dim: int, action_mode: str = "discrete5") -> dict[str, Any]:
    """Return a skeleton header for hand-built policies (tests, examples).

    Fill in ``network.layers`` (and the other fields as needed).

    Exports of trained agents get a complete header from
    :func:`metasched.agents.export.export_model` instead.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": "handmade",
        "env_id": "",
        "env_kwargs": {},
        "decision_interval": 1,
        "observation": {
            "shape": [input_dim],
            "names": None,
            "low": [-1e9] * input_dim,
            "high": [1e9] * input_dim,
        },
        "action": {
            "mode": action_mode,
            "space": "discrete",
            "n": len(DISCRETE_FACTORS[action_mode]),
        },
        "network": {
            "input_dim": input_dim,
            "layers": [],
            "head": {"type": "argmax", "of": "q_values"},
        },
        "obs_norm": None,
        "versions": {},
        "created": "",
    }


# -- decoding and validation -----------------------------------------------------------------
def _split_safetensors(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (safetensors header, metasched header) of ``data``; raise _Invalid."""
    if len(data) < 8:
        raise _Invalid(f"file is truncated or not a safetensors file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER_BYTES or n < 2 or data[8:9] != b"{":
        raise _Invalid("not a safetensors file (invalid header)")
    if 8 + n > len(data):
        raise _Invalid(
            f"file is truncated (its header needs {n} bytes, only {len(data) - 8} follow)"
        )
    try:
        st_header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Invalid("corrupt safetensors header (not valid JSON)") from None
    if not isinstance(st_header, dict):
        raise _Invalid("corrupt safetensors header (not a JSON object)")
    ends = [
        v["data_offsets"][1]
        for k, v in st_header.items()
        if k != "__metadata__"
        and isinstance(v, dict)
        and isinstance(v.get("data_offsets"), list)
        and len(v["data_offsets"]) == 2
        and isinstance(v["data_offsets"][1], int)
    ]
    available = len(data) - 8 - n
    if ends and max(ends) > available:
        raise _Invalid(
            f"file is truncated (tensor data needs {max(ends)} bytes, only {available} present)"
        )
    meta = st_header.get("__metadata__")
    if not isinstance(meta, dict) or _METADATA_KEY not in meta:
        raise _Invalid("not a metasched policy file (no 'metasched' metadata)")
    text = meta[_METADATA_KEY]
    try:
        header = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise _Invalid("corrupt metasched header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise _Invalid("corrupt metasched header (not a JSON object)")
    try:
        canonical = canonical_json(header).decode("ascii") == text
    except ValueError:  # NaN/Infinity literals
        canonical = False
    if not canonical:  # e.g. a flipped digit beyond float precision parses to the same value
        raise _Invalid("corrupt metasched header (not in canonical JSON form)")
    return st_header, header


def _check_header_fields(header: dict[str, Any]) -> None:
    fmt = header.get("format")
    if fmt != FORMAT:
        raise _Invalid(f"not a metasched policy (format is {fmt!r}, expected {FORMAT!r})")
    if "format_version" not in header:
        raise _Invalid("header lacks required key(s) 'format_version'")
    version = header["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Invalid(f"invalid format_version {version!r} (expected an integer)")
    if version == 1:
        raise _Invalid(
            "policy file format version 1 (a policy over the -v0 envs' observations) is no "
            f"longer read; this metasched reads version {FORMAT_VERSION}: retrain on a -v1 env "
            "and re-export with `metasched export RUN -o FILE`"
        )
    if version != FORMAT_VERSION:
        newer = " (written by a newer metasched; upgrade to read it)" if version > 2 else ""
        raise _Invalid(
            f"unsupported format_version {version}{newer}; this metasched reads version "
            f"{FORMAT_VERSION}"
        )
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise _Invalid(f"header lacks required key(s) {', '.join(map(repr, missing))}")
    types: dict[str, type | tuple[type, ...]] = {
        "algo": str,
        "env_id": str,
        "env_kwargs": dict,
        "observation": dict,
        "action": dict,
        "network": dict,
        "versions": dict,
        "created": str,
        "checksum": str,
    }
    for key, typ in types.items():
        if not isinstance(header[key], typ):
            raise _Invalid(
                f"header field {key!r} has the wrong type ({type(header[key]).__name__})"
            )
    di = header["decision_interval"]
    if isinstance(di, bool) or not isinstance(di, int) or di < 1:
        raise _Invalid(f"header field 'decision_interval' must be a positive integer, got {di!r}")


def _float_list(value: Any, n: int | None, what: str) -> np.ndarray:
    ok = isinstance(value, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    )
    if not ok or (n is not None and len(value) != n):
        size = f"{n} " if n is not None else ""
        raise _Invalid(f"header field {what} must be a list of {size}numbers")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise _Invalid(f"header field {what} has non-finite values")
    return arr


def _pos_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(f"{what} must be a positive integer, got {value!r}")
    return value


def _number(spec: dict[str, Any], key: str, default: float, what: str) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid(f"{what}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _activation(spec: dict[str, Any], what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    kind = spec["type"]
    if kind == "tanh":
        return torch.tanh
    if kind == "relu":
        return F.relu
    if kind == "sigmoid":
        return torch.sigmoid
    if kind == "silu":
        return F.silu
    if kind == "selu":
        return F.selu
    if kind == "elu":
        alpha = _number(spec, "alpha", 1.0, what)
        return lambda x: F.elu(x, alpha)
    if kind == "leaky_relu":
        slope = _number(spec, "negative_slope", 0.01, what)
        return lambda x: F.leaky_relu(x, slope)
    if kind == "gelu":
        approximate = spec.get("approximate", "none")
        if approximate not in ("none", "tanh"):
            raise _Invalid(f"{what}: approximate must be 'none' or 'tanh'")
        return lambda x: F.gelu(x, approximate=approximate)
    if kind == "hardtanh":
        lo = _number(spec, "min_val", -1.0, what)
        hi = _number(spec, "max_val", 1.0, what)
        return lambda x: F.hardtanh(x, lo, hi)
    if kind == "softplus":
        beta = _number(spec, "beta", 1.0, what)
        threshold = _number(spec, "threshold", 20.0, what)
        return lambda x: F.softplus(x, beta, threshold)
    raise _Invalid(f"{what} has unknown type {kind!r}")


class _Network:
    """The policy network rebuilt from a header's ``network`` spec and the file's tensors."""

    def __init__(
        self, spec: dict[str, Any], tensors: dict[str, torch.Tensor], header: dict[str, Any]
    ) -> None:
        self.input_dim = _pos_int(spec.get("input_dim"), "network.input_dim")
        obs_shape = header["observation"].get("shape")
        if obs_shape != [self.input_dim]:
            raise _Invalid(
                f"network.input_dim {self.input_dim} does not match the observation shape "
                f"{obs_shape!r}"
            )
        layers = spec.get("layers")
        if not isinstance(layers, list):
            raise _Invalid("header field network.layers must be a list")
        used: set[str] = set()

        def tensor(name: Any, shape: list[int], what: str) -> torch.Tensor:
            if not isinstance(name, str) or name not in tensors:
                raise _Invalid(f"{what} refers to tensor {name!r}, which the file does not have")
            t = tensors[name]
            if t.dtype != _TENSOR_DTYPE:
                raise _Invalid(f"tensor {name!r} has dtype {t.dtype}, expected float32")
            if list(t.shape) != shape:
                raise _Invalid(
                    f"tensor {name!r} has shape {list(t.shape)}, the network spec needs {shape}"
                )
            used.add(name)
            return t

        self.ops: list[tuple[str, Any]] = []
        self.lstm: torch.nn.LSTM | None = None
        dim = self.input_dim
        for i, layer in enumerate(layers):
            what = f"network layer {i}"
            if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
                raise _Invalid(f"{what} must be an object with a 'type'")
            kind = layer["type"]
            if kind == "linear":
                w_name = layer.get("weight")
                if isinstance(w_name, str) and w_name in tensors and tensors[w_name].ndim != 2:
                    shape = list(tensors[w_name].shape)
                    raise _Invalid(
                        f"tensor {w_name!r} has shape {shape}, a linear weight needs [out, {dim}]"
                    )
                out = int(tensors[w_name].shape[0]) if w_name in tensors else 0
                w = tensor(w_name, [out, dim], f"{what} (linear weight)")
                b = None
                if layer.get("bias") is not None:
                    b = tensor(layer["bias"], [out], f"{what} (linear bias)")
                self.ops.append(("linear", (w, b)))
                dim = out
            elif kind == "lstm":
                if self.lstm is not None:
                    raise _Invalid("the network spec has more than one lstm layer")
                self.lstm = self._build_lstm(layer, dim, tensor, what)
                self.ops.append(("lstm", None))
                dim = self.lstm.hidden_size
            else:
                self.ops.append(("act", _activation(layer, what)))
        unused = sorted(set(tensors) - used)
        if unused:
            raise _Invalid(f"tensor {unused[0]!r} is not used by the network spec")
        self.output_dim = dim
        self._check_head(spec.get("head"), header["action"])

    @staticmethod
    def _build_lstm(
        layer: dict[str, Any], dim: int, tensor: Callable[..., torch.Tensor], what: str
    ) -> torch.nn.LSTM:
        in_size = _pos_int(layer.get("input_size"), f"{what}: input_size")
        hidden = _pos_int(layer.get("hidden_size"), f"{what}: hidden_size")
        n_layers = _pos_int(layer.get("num_layers"), f"{what}: num_layers")
        bias = layer.get("bias", True)
        if in_size != dim or not isinstance(bias, bool):
            raise _Invalid(f"{what}: input_size {in_size} does not match its input ({dim})")
        params = layer.get("params")
        if not isinstance(params, dict):
            raise _Invalid(f"{what}: params must map torch LSTM parameter names to tensors")
        lstm = torch.nn.LSTM(in_size, hidden, num_layers=n_layers, bias=bias)
        expected = {name for name, _ in lstm.named_parameters()}
        if set(params) != expected:
            raise _Invalid(
                f"{what}: params must name exactly {sorted(expected)}, got {sorted(params)}"
            )
        with torch.no_grad():
            for name, p in lstm.named_parameters():
                p.copy_(tensor(params[name], list(p.shape), f"{what} ({name})"))
        lstm.eval()
        lstm.requires_grad_(False)
        return lstm

    def _check_head(self, head: Any, action: dict[str, Any]) -> None:
        if not isinstance(head, dict) or not isinstance(head.get("type"), str):
            raise _Invalid("header field network.head must be an object with a 'type'")
        kind = head["type"]
        self.head = kind
        space = action.get("space")
        if kind == "argmax":
            self.argmax_of = head.get("of")
            if self.argmax_of not in ("probs", "q_values"):
                raise _Invalid("network.head 'argmax' needs 'of': 'probs' or 'q_values'")
            if space != "discrete":
                raise _Invalid(
                    f"network.head 'argmax' needs a discrete action space, not {space!r}"
                )
            if self.output_dim != action["n"]:
                raise _Invalid(
                    f"the network outputs {self.output_dim} values for {action['n']} actions"
                )
        elif kind in ("gaussian_mean", "tanh_rescale"):
            if space != "box":
                raise _Invalid(f"network.head {kind!r} needs a box action space, not {space!r}")
            if self.output_dim != int(np.prod(action["shape"])):
                raise _Invalid(
                    f"the network outputs {self.output_dim} values for actions of shape "
                    f"{action['shape']}"
                )
        else:
            raise _Invalid(f"network.head has unknown type {kind!r}")

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, start: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        for kind, op in self.ops:
            if kind == "linear":
                x = F.linear(x, op[0], op[1])
            elif kind == "act":
                x = op(x)
            else:
                assert self.lstm is not None and state is not None
                keep = (1.0 - start).view(1, -1, 1)
                out, state = self.lstm(x.unsqueeze(0), (keep * state[0], keep * state[1]))
                x = out[0]
        return x, state


def _check_action(action: dict[str, Any]) -> dict[str, Any]:
    mode = action.get("mode")
    if mode not in ACTION_MODES:
        raise _Invalid(f"header field action.mode must be one of {ACTION_MODES}, got {mode!r}")
    space = action.get("space")
    if space == "discrete":
        n = _pos_int(action.get("n"), "action.n")
        if mode not in DISCRETE_FACTORS or len(DISCRETE_FACTORS[mode]) != n:
            raise _Invalid(f"action mode {mode!r} does not act in a Discrete({n}) space")
        return {"space": space, "n": n}
    if space == "box":
        shape = action.get("shape")
        if not isinstance(shape, list) or not shape:
            raise _Invalid("header field action.shape must be a non-empty list")
        for s in shape:
            _pos_int(s, "action.shape entries")
        if mode in DISCRETE_FACTORS:
            raise _Invalid(f"action mode {mode!r} needs a discrete action space, not a box")
        size = int(np.prod(shape))
        low = _float_list(action.get("low"), size, "action.low").astype(np.float32)
        high = _float_list(action.get("high"), size, "action.high").astype(np.float32)
        return {"space": space, "shape": tuple(shape), "low": low, "high": high}
    raise _Invalid(f"header field action.space must be 'discrete' or 'box', got {space!r}")


def _check_observation(observation: dict[str, Any]) -> int:
    shape = observation.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1):
        raise _Invalid("header field observation.shape must be [n_features]")
    n = _pos_int(shape[0], "observation.shape[0]")
    names = observation.get("names")
    if names is not None and (
        not isinstance(names, list) or len(names) != n or not all(isinstance(s, str) for s in names)
    ):
        raise _Invalid(f"header field observation.names must be null or {n} strings")
    _float_list(observation.get("low"), n, "observation.low")
    _float_list(observation.get("high"), n, "observation.high")
    return n


def check_obs_norm(obs_norm: Any, n: int) -> dict[str, Any] | None:
    """Validate a header's ``obs_norm`` for ``n`` features; return its runtime form or None.

    The one check of observation-normalisation statistics: the writer (``agents.export``)
    and the reader both use it. Raises ``ValueError`` naming the bad field.
    """
    if obs_norm is None:
        return None
    if not isinstance(obs_norm, dict):
        raise _Invalid("header field obs_norm must be null or an object")
    mean = _float_list(obs_norm.get("mean"), n, "obs_norm.mean")
    var = _float_list(obs_norm.get("var"), n, "obs_norm.var")
    eps = _number(obs_norm, "epsilon", math.nan, "obs_norm")
    clip = _number(obs_norm, "clip_obs", math.nan, "obs_norm")
    if np.any(var + eps <= 0) or clip <= 0:
        raise _Invalid("header field obs_norm needs var + epsilon > 0 and clip_obs > 0")
    return {"mean": mean, "scale": np.sqrt(var + eps), "clip": clip}


def _decode(data: bytes) -> tuple[dict[str, Any], _Network]:
    """Validate the bytes of a policy file; return its header and network (or raise _Invalid)."""
    _, header = _split_safetensors(data)
    _check_header_fields(header)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # the rust extension raises its own error types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _Invalid(f"corrupt tensor data ({msg})") from None
    if compute_checksum(header, tensors) != header["checksum"]:
        raise _Invalid("checksum mismatch (the file is corrupt or was modified)")
    n = _check_observation(header["observation"])
    _check_action(header["action"])
    check_obs_norm(header["obs_norm"], n)
    return header, _Network(header["network"], tensors, header)


# -- the loaded policy -------------------------------------------------------------------------
class PolicyFile:
    """An exported policy, loaded with plain torch: deterministic actions from observations.

    Build it with :meth:`load` (or :func:`load_policy`). :meth:`predict` takes raw env
    observations — the stored ``VecNormalize`` statistics are applied inside — and returns
    what Stable-Baselines3's ``model.predict(normalized_obs, deterministic=True)`` returns.

    Attributes:
        path: the file it was loaded from (``None`` for bytes).
        recurrent: whether the policy carries an LSTM state between calls.
        checksum: the file's checksum (identifies the policy).
    """

    def __init__(self, header: dict[str, Any], network: _Network, source: str | None) -> None:
        self._header = header
        self._net = network
        self.path = source
        self.checksum: str = header["checksum"]
        self.recurrent = network.lstm is not None
        self.n_features = network.input_dim
        self._action = _check_action(header["action"])
        self._norm = check_obs_norm(header["obs_norm"], self.n_features)

    @property
    def header(self) -> dict[str, Any]:
        """A copy of the file's JSON header."""
        return copy.deepcopy(self._header)

    def __repr__(self) -> str:
        h = self._header
        return (
            f"PolicyFile(algo={h['algo']!r}, env_id={h['env_id']!r}, "
            f"action={h['action'].get('mode')!r}, recurrent={self.recurrent}, path={self.path!r})"
        )

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PolicyFile:
        """Load a ``.msched`` file.

        Raises:
            ExportError: when the file is missing, unreadable, truncated, corrupt (checksum
                mismatch), not a metasched policy, of an unsupported ``format_version``, or
                its tensors do not match its network spec.
        """
        where = os.fspath(path)
        try:
            data = Path(where).read_bytes()
        except FileNotFoundError:
            raise ExportError(f"cannot load policy file {where!r}: no such file") from None
        except IsADirectoryError:
            raise ExportError(f"cannot load policy file {where!r}: it is a directory") from None
        except OSError as e:
            raise ExportError(
                f"cannot load policy file {where!r}: cannot read it ({e.strerror or e})"
            ) from None
        return cls.from_bytes(data, source=where)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str | None = None) -> PolicyFile:
        """Decode a policy from the bytes of a file (errors name ``source``)."""
        where = repr(source) if source is not None else "<bytes>"
        try:
            header, network = _decode(bytes(data))
        except _Invalid as e:
            raise ExportError(f"cannot load policy file {where}: {e}") from None
        return cls(header, network, source)

    # -- inference ---------------------------------------------------------------------------
    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Apply the stored observation normalisation (identity without one); float32."""
        x = np.asarray(obs)
        if self._norm is None:
            return x.astype(np.float32, copy=False)
        z = (x - self._norm["mean"]) / self._norm["scale"]
        return np.clip(z, -self._norm["clip"], self._norm["clip"]).astype(np.float32)

    def initial_state(self, n: int = 1) -> RNNState | None:
        """Return the zero LSTM state of ``n`` parallel episodes (``None`` if not recurrent)."""
        if self._net.lstm is None:
            return None
        lstm = self._net.lstm
        zeros = np.zeros((lstm.num_layers, n, lstm.hidden_size), dtype=np.float32)
        return zeros, zeros.copy()

    def predict(
        self,
        obs: np.ndarray,
        state: RNNState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, RNNState | None]:
        """Return ``(actions, state)`` for raw observations of shape ``(F,)`` or ``(n, F)``.

        Actions have the shapes and dtypes of SB3's ``predict``: ``(n,)`` int64 for a
        Discrete space and ``(n, *shape)`` float32 for a Box, without the leading ``n`` for a
        single ``(F,)`` observation. Recurrent policies take and return the LSTM state
        ``(h, c)`` (zeros when ``state`` is None; rows with a true ``episode_start`` are reset
        first); other policies return ``state`` unchanged. Only deterministic actions exist.
        """
        if not deterministic:
            raise ValueError("exported policies are deterministic: call predict(obs)")
        x = np.asarray(obs)
        f = self.n_features
        if x.shape == (f,):
            vectorized = False
            x = x.reshape(1, f)
        elif x.ndim == 2 and x.shape[1] == f:
            vectorized = True
        else:
            raise ValueError(f"observations must have shape ({f},) or (n, {f}), got {x.shape}")
        n = x.shape[0]
        t = torch.as_tensor(self.normalize(x)).float()
        lstm_state = None
        start = torch.zeros(n)
        new_state: RNNState | None = state
        if self._net.lstm is not None:
            if state is None:
                state = self.initial_state(n)
            assert state is not None
            lstm = self._net.lstm
            want = (lstm.num_layers, n, lstm.hidden_size)
            if len(state) != 2 or any(np.shape(s) != want for s in state):
                raise ValueError(f"state must be two arrays of shape {want}")
            lstm_state = (
                torch.tensor(np.asarray(state[0]), dtype=torch.float32),
                torch.tensor(np.asarray(state[1]), dtype=torch.float32),
            )
            if episode_start is not None:
                start = torch.tensor(np.asarray(episode_start), dtype=torch.float32).reshape(n)
        with torch.no_grad():
            out, lstm_state = self._net.forward(t, lstm_state, start)
            actions = self._head(out)
        if lstm_state is not None:
            new_state = (lstm_state[0].numpy(), lstm_state[1].numpy())
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, new_state

    def _head(self, out: torch.Tensor) -> np.ndarray:
        net, act = self._net, self._action
        if net.head == "argmax":
            if net.argmax_of == "probs":
                dist = torch.distributions.Categorical(logits=out, validate_args=False)
                idx = torch.argmax(dist.probs, dim=1)
            else:
                idx = out.argmax(dim=1)
            return idx.cpu().numpy().reshape(-1)
        shape = act["shape"]
        if net.head == "gaussian_mean":
            a = out.cpu().numpy().reshape((-1, *shape))
            return np.clip(a, act["low"].reshape(shape), act["high"].reshape(shape))
        a = torch.tanh(out).cpu().numpy().reshape((-1, *shape))
        low, high = act["low"].reshape(shape), act["high"].reshape(shape)
        return low + (0.5 * (a + 1.0) * (high - low))


def load_policy(path: str | os.PathLike[str]) -> PolicyFile:
    """Load a ``.msched`` policy file (see :meth:`PolicyFile.load`)."""
    return PolicyFile.load(path)
