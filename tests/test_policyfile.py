"""The .msched format: round trip, plain-torch inference, and every way a file can be bad."""

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from metasched.errors import ExportError
from metasched.policyfile import (
    FORMAT_VERSION,
    HEADER_KEYS,
    PolicyFile,
    compute_checksum,
    encode_policy,
    load_policy,
    minimal_header,
    write_policy,
)

F = 12
ROOT = Path(__file__).resolve().parents[1]


def _mlp(seed=0, n_out=3, hidden=8):
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "l0.w": torch.randn(hidden, F, generator=g),
        "l0.b": torch.randn(hidden, generator=g),
        "l1.w": torch.randn(n_out, hidden, generator=g),
        "l1.b": torch.randn(n_out, generator=g),
    }
    layers = [
        {"type": "linear", "weight": "l0.w", "bias": "l0.b"},
        {"type": "tanh"},
        {"type": "linear", "weight": "l1.w", "bias": "l1.b"},
    ]
    return tensors, layers


def _reference_mlp(tensors, x):
    h = torch.tanh(torch.as_tensor(x) @ tensors["l0.w"].T + tensors["l0.b"])
    return h @ tensors["l1.w"].T + tensors["l1.b"]


def _header(layers, *, head=None, action=None, obs_norm=None):
    h = minimal_header(input_dim=F, action_mode="discrete3")
    h["network"]["layers"] = layers
    if head is not None:
        h["network"]["head"] = head
    if action is not None:
        h["action"] = action
    h["obs_norm"] = obs_norm
    h["decision_interval"] = 50
    return h


BOX = {"mode": "continuous", "space": "box", "shape": [1], "low": [-0.5], "high": [2.0]}


@pytest.fixture
def mlp_file(tmp_path):
    tensors, layers = _mlp()
    path = write_policy(tmp_path / "p.msched", tensors, _header(layers))
    return path, tensors


def _obs(n=200, seed=0):
    return np.random.default_rng(seed).uniform(-3, 3, size=(n, F)).astype(np.float32)


# -- round trip and inference ----------------------------------------------------------------
def test_round_trip_header_tensors_and_checksum(mlp_file):
    path, tensors = mlp_file
    pol = load_policy(path)
    assert isinstance(pol, PolicyFile) and not pol.recurrent
    h = pol.header
    assert set(HEADER_KEYS) <= set(h) and h["format_version"] == FORMAT_VERSION
    assert h["checksum"] == pol.checksum == compute_checksum(h, tensors)
    assert len(h["checksum"]) == 64
    # a plain safetensors file: any safetensors reader sees the tensors and the header
    raw = safetensors.torch.load(path.read_bytes())
    assert set(raw) == set(tensors)
    for k, t in tensors.items():
        assert torch.equal(raw[k], t)
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["metasched"]) == h
    h["algo"] = "changed"  # .header is a copy
    assert pol.header["algo"] == "handmade"


@pytest.mark.parametrize("of", ["q_values", "probs"])
def test_discrete_predict_is_argmax(mlp_file, tmp_path, of):
    _, tensors = mlp_file
    _, layers = _mlp()
    path = write_policy(
        tmp_path / "d.msched", tensors, _header(layers, head={"type": "argmax", "of": of})
    )
    pol = load_policy(path)
    obs = _obs()
    actions, state = pol.predict(obs)
    assert state is None and actions.shape == (len(obs),) and actions.dtype == np.int64
    np.testing.assert_array_equal(actions, _reference_mlp(tensors, obs).argmax(1).numpy())
    single, _ = pol.predict(obs[3])
    assert single.shape == () and single.dtype == np.int64 and single == actions[3]
    assert pol.predict(obs, state="untouched")[1] == "untouched"


@pytest.mark.parametrize("head", ["gaussian_mean", "tanh_rescale"])
def test_box_heads(tmp_path, head):
    tensors, layers = _mlp(n_out=1)
    path = write_policy(
        tmp_path / "b.msched", tensors, _header(layers, head={"type": head}, action=BOX)
    )
    pol = load_policy(path)
    obs = _obs()
    actions, _ = pol.predict(obs)
    assert actions.shape == (len(obs), 1) and actions.dtype == np.float32
    out = _reference_mlp(tensors, obs).numpy()
    if head == "gaussian_mean":
        want = np.clip(out, np.float32(-0.5), np.float32(2.0))
    else:
        want = np.float32(-0.5) + 0.5 * (np.tanh(out) + 1.0) * np.float32(2.5)
    np.testing.assert_allclose(actions, want, rtol=1e-6, atol=1e-6)
    assert np.all((actions >= -0.5) & (actions <= 2.0))
    assert pol.predict(obs[0])[0].shape == (1,)


def test_obs_norm_is_applied_as_vecnormalize_computes_it(tmp_path):
    tensors, layers = _mlp(n_out=1)
    rng = np.random.default_rng(4)
    norm = {
        "mean": rng.normal(size=F).tolist(),
        "var": rng.uniform(0.0, 2.0, size=F).tolist(),
        "epsilon": 1e-8,
        "clip_obs": 1.5,
    }
    kw = {"head": {"type": "gaussian_mean"}, "action": BOX}
    normed = load_policy(
        write_policy(tmp_path / "n.msched", tensors, _header(layers, **kw, obs_norm=norm))
    )
    plain = load_policy(write_policy(tmp_path / "p.msched", tensors, _header(layers, **kw)))
    obs = _obs()
    z = (obs - np.array(norm["mean"])) / np.sqrt(np.array(norm["var"]) + norm["epsilon"])
    z = np.clip(z, -1.5, 1.5).astype(np.float32)
    np.testing.assert_array_equal(normed.normalize(obs), z)
    np.testing.assert_array_equal(normed.predict(obs)[0], plain.predict(z)[0])


def test_usage_errors(mlp_file):
    pol = load_policy(mlp_file[0])
    with pytest.raises(ValueError, match="shape"):
        pol.predict(np.zeros(F + 1))
    with pytest.raises(ValueError, match="shape"):
        pol.predict(np.zeros((2, 3, F)))
    with pytest.raises(ValueError, match="deterministic"):
        pol.predict(np.zeros(F), deterministic=False)


def _lstm_policy(tmp_path, n_layers=2, hidden=5):
    g = torch.Generator().manual_seed(1)
    ref = torch.nn.LSTM(6, hidden, num_layers=n_layers)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    tensors = {
        "in.w": torch.randn(6, F, generator=g),
        "in.b": torch.randn(6, generator=g),
        "out.w": torch.randn(3, hidden, generator=g),
        "out.b": torch.randn(3, generator=g),
    }
    params = {}
    for name, p in ref.named_parameters():
        tensors[f"lstm.{name}"] = p.detach().clone()
        params[name] = f"lstm.{name}"
    layers = [
        {"type": "linear", "weight": "in.w", "bias": "in.b"},
        {"type": "tanh"},
        {
            "type": "lstm",
            "input_size": 6,
            "hidden_size": hidden,
            "num_layers": n_layers,
            "bias": True,
            "params": params,
        },
        {"type": "linear", "weight": "out.w", "bias": "out.b"},
    ]
    path = write_policy(tmp_path / "lstm.msched", tensors, _header(layers))
    return path, tensors, ref


def test_lstm_state_is_carried_and_reset_at_episode_start(tmp_path):
    path, tensors, ref = _lstm_policy(tmp_path)
    pol = load_policy(path)
    assert pol.recurrent
    n, T = 3, 12
    obs = np.random.default_rng(2).uniform(-2, 2, size=(T, n, F)).astype(np.float32)
    # reference: the whole sequence through torch's LSTM in one call, no resets
    with torch.no_grad():
        x = torch.tanh(torch.as_tensor(obs) @ tensors["in.w"].T + tensors["in.b"])
        out, (h_ref, c_ref) = ref(x)
        want = (out @ tensors["out.w"].T + tensors["out.b"]).argmax(-1).numpy()
    state = None
    for t in range(T):
        actions, state = pol.predict(obs[t], state)
        np.testing.assert_array_equal(actions, want[t])
    assert state[0].shape == (2, n, 5) and state[0].dtype == np.float32
    np.testing.assert_allclose(state[0], h_ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state[1], c_ref.numpy(), rtol=1e-5, atol=1e-6)
    # None == zeros; a true episode_start resets that row only
    fresh = pol.predict(obs[0], None)
    zeros = pol.predict(obs[0], pol.initial_state(n))
    for a, b in zip(fresh[1], zeros[1], strict=True):
        np.testing.assert_array_equal(a, b)
    _, reset = pol.predict(obs[0], state, np.array([True, False, True]))
    carried = pol.predict(obs[0], state)[1]
    for k in range(2):
        np.testing.assert_array_equal(reset[k][:, [0, 2]], fresh[1][k][:, [0, 2]])
        np.testing.assert_array_equal(reset[k][:, 1], carried[k][:, 1])
    with pytest.raises(ValueError, match="state"):
        pol.predict(obs[0], pol.initial_state(n + 1))


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    path, _, _ = _lstm_policy(tmp_path)
    want = load_policy(path).predict(_obs(20))[0]

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    np.testing.assert_array_equal(load_policy(path).predict(_obs(20))[0], want)


def test_loader_modules_never_import_sb3_envs_or_agents():
    """Static check of the layering rule (the runtime check is in tests/agents/test_export.py)."""
    files = [
        ROOT / "metasched" / "policyfile.py",
        *(ROOT / "metasched" / "schedulers").glob("*.py"),
    ]
    banned = ("stable_baselines3", "sb3_contrib", "metasched.envs", "metasched.agents")
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(banned), f"{f.name} imports {name}"


# -- bad files -------------------------------------------------------------------------------
def _assert_clear(exc_info, path, match):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert match in msg, msg
    assert exc_info.value.__cause__ is None and exc_info.value.__suppress_context__


def _load_err(path, match):
    with pytest.raises(ExportError) as e:
        load_policy(path)
    _assert_clear(e, path, match)


def test_missing_file_and_directory(tmp_path):
    _load_err(tmp_path / "nope.msched", "no such file")
    _load_err(tmp_path, "directory")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated or not a safetensors file"),
        (b"PK\x03\x04 this is a zip", "not a safetensors file"),
        (bytes(range(256)) * 8, "not a safetensors file"),
        (b"hello world, not a policy\n" * 10, "not a safetensors file"),
    ],
    ids=["empty", "zip", "binary", "text"],
)
def test_garbage_files(tmp_path, data, match):
    p = tmp_path / "bad.msched"
    p.write_bytes(data)
    _load_err(p, match)


def test_plain_safetensors_file_is_not_a_policy(tmp_path):
    p = tmp_path / "plain.safetensors"
    p.write_bytes(safetensors.torch.save({"w": torch.ones(2)}))
    _load_err(p, "no 'metasched' metadata")


def test_truncated_files(mlp_file, tmp_path):
    data = mlp_file[0].read_bytes()
    p = tmp_path / "cut.msched"
    for cut in (1, 7, 8, 9, 100, len(data) // 2, len(data) - 4, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(ExportError) as e:
            load_policy(p)
        _assert_clear(e, p, "")
    p.write_bytes(data[:-1])
    _load_err(p, "truncated")


def _flip(data, byte, bit=0):
    b = bytearray(data)
    b[byte] ^= 1 << bit
    return bytes(b)


def test_flipped_bit_in_tensor_data(mlp_file, tmp_path):
    data = mlp_file[0].read_bytes()
    p = tmp_path / "flip.msched"
    p.write_bytes(_flip(data, len(data) - 5, 3))  # inside the last tensor's float32 data
    _load_err(p, "checksum mismatch")


def test_flipped_bit_in_header(mlp_file, tmp_path):
    data = mlp_file[0].read_bytes()
    i = data.index(b"handmade")  # the algo name inside the metasched JSON header
    p = tmp_path / "flip.msched"
    p.write_bytes(_flip(data, i, 0))  # 'h' -> 'i': still valid JSON, different header
    _load_err(p, "checksum mismatch")


def test_every_sampled_single_bit_flip_is_detected(mlp_file, tmp_path):
    data = mlp_file[0].read_bytes()
    rng = np.random.default_rng(0)
    p = tmp_path / "flip.msched"
    for pos in rng.choice(len(data), size=400, replace=False):
        p.write_bytes(_flip(data, int(pos), int(rng.integers(8))))
        with pytest.raises(ExportError):
            load_policy(p)


def _write_raw(tmp_path, tensors, header, name="raw.msched"):
    p = tmp_path / name
    p.write_bytes(encode_policy(tensors, header))
    return p


@pytest.mark.parametrize(
    ("version", "match"),
    [
        (3, "unsupported format_version 3 (written by a newer metasched"),
        (0, "unsupported format_version 0"),
        ("1", "invalid format_version '1'"),
        (1, "format version 1 (a policy over the -v0 envs' observations) is no longer read; "
            "this metasched reads version 2: retrain on a -v1 env and re-export"),
    ],
)
def test_wrong_format_version(tmp_path, version, match):
    tensors, layers = _mlp()
    h = _header(layers)
    h["format_version"] = version
    _load_err(_write_raw(tmp_path, tensors, h), match)


def test_wrong_format_and_missing_keys(tmp_path):
    tensors, layers = _mlp()
    h = _header(layers)
    h["format"] = "something-else"
    _load_err(_write_raw(tmp_path, tensors, h, "a.msched"), "not a metasched policy")
    h = _header(layers)
    del h["network"], h["obs_norm"]
    _load_err(
        _write_raw(tmp_path, tensors, h, "b.msched"), "lacks required key(s) 'network', 'obs_norm'"
    )


def test_tensors_must_match_the_spec(tmp_path):
    tensors, layers = _mlp()
    bad = dict(tensors, **{"l1.w": torch.zeros(3, 7)})
    _load_err(
        _write_raw(tmp_path, bad, _header(layers), "a.msched"),
        "tensor 'l1.w' has shape [3, 7], the network spec needs [3, 8]",
    )
    extra = dict(tensors, stray=torch.zeros(2))
    _load_err(_write_raw(tmp_path, extra, _header(layers), "b.msched"), "'stray' is not used")
    missing = {k: v for k, v in tensors.items() if k != "l0.b"}
    _load_err(_write_raw(tmp_path, missing, _header(layers), "c.msched"), "does not have")
    h = _header(layers, head={"type": "argmax", "of": "q_values"})
    h["action"] = {"mode": "discrete5", "space": "discrete", "n": 5}
    _load_err(_write_raw(tmp_path, tensors, h, "d.msched"), "outputs 3 values for 5 actions")
    h = _header([*layers, {"type": "swish2"}])
    _load_err(_write_raw(tmp_path, tensors, h, "e.msched"), "unknown type 'swish2'")


# -- writing ---------------------------------------------------------------------------------
def test_write_is_atomic_and_validated(tmp_path):
    tensors, layers = _mlp()
    path = write_policy(tmp_path / "p.msched", tensors, _header(layers))
    before = path.read_bytes()
    bad = _header(layers)
    bad["network"]["layers"] = layers[:1]  # 8 outputs for 3 actions
    with pytest.raises(ExportError, match="refusing to write"):
        write_policy(path, tensors, bad)
    assert path.read_bytes() == before
    h = _header(layers)
    h["algo"] = "second"
    write_policy(path, tensors, h)  # replaces the old file
    assert load_policy(path).header["algo"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.msched"]  # no temporaries left
    with pytest.raises(ExportError, match="cannot write"):
        write_policy(tmp_path / "no" / "such" / "dir.msched", tensors, h)
    nan = _header(layers)
    nan["extra"] = {"x": float("nan")}
    with pytest.raises(ExportError, match="strict JSON"):
        write_policy(tmp_path / "nan.msched", tensors, nan)
