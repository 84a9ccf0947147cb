import gzip

import numpy as np
import pytest

from metasched.errors import MissingDataError
from metasched.inner_tasks import FashionConfig, FashionFamily, FashionTask
from metasched.inner_tasks import fashion as fm
from metasched.inner_tasks.smoke import smoke_test_task


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """A tiny synthetic Fashion-MNIST in IDX format (the tests need no Debian package)."""
    rng = np.random.default_rng(0)
    for key, n in (("x", 600), ("x_test", 200)):
        y = rng.integers(10, size=n)
        x = rng.integers(0, 60, size=(n, 28, 28))
        for c in range(10):  # class-dependent bright square: learnable
            x[y == c, 2 * c : 2 * c + 6, 4:10] = 250
        write_idx(tmp_path / fm.FASHION_FILES[key], x)
        write_idx(tmp_path / fm.FASHION_FILES[key.replace("x", "y")], y)
    monkeypatch.setenv("METASCHED_FASHION_MNIST_DIR", str(tmp_path))
    fm.fashion_data.cache_clear()
    yield tmp_path
    fm.fashion_data.cache_clear()


def test_smoke_on_synthetic_idx(fake_fashion):
    cfg = FashionConfig(channels=2, batch_size=16, train_size=300, val_size=100)
    task = FashionTask(cfg)
    assert task.x_train.shape == (300, 28, 28)
    smoke_test_task(task, lr=0.1, steps=20)


def test_missing_files_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("METASCHED_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    fm.fashion_data.cache_clear()
    try:
        with pytest.raises(MissingDataError, match="dataset-fashion-mnist"):
            FashionTask(FashionConfig())
    finally:
        fm.fashion_data.cache_clear()


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(Exception, match="does not match"):
        fm.read_idx(bad)


@pytest.mark.skipif(not fm.DEFAULT_DIR.joinpath(fm.FASHION_FILES["x"]).exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_data_when_installed(monkeypatch):
    monkeypatch.delenv("METASCHED_FASHION_MNIST_DIR", raising=False)
    fm.fashion_data.cache_clear()
    try:
        data = fm.fashion_data()
        assert data["x"].shape == (60000, 28, 28) and data["x_test"].shape == (10000, 28, 28)
        task = FashionTask(FashionConfig(channels=4, batch_size=16, train_size=500, val_size=200))
        smoke_test_task(task, lr=0.1, steps=20)
    finally:
        fm.fashion_data.cache_clear()


def test_family():
    fam = FashionFamily(seed=0)
    a = fam.instance_config("test", 1)
    assert a == FashionFamily(seed=0).instance_config("test", 1)
    assert a.name.startswith("fashion-c") and a.name.endswith("-test1")
    shift = fam.instance_config("shift", 1)
    assert shift.label_noise >= 0.2
    with pytest.raises(ValueError, match="val_size"):
        FashionConfig(val_size=20000)
