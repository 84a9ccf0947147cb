import numpy as np
import pytest
import torch

from metasched.inner_tasks import CharLMConfig, CharLMFamily, CharLMTask
from metasched.inner_tasks.charlm import TinyTransformer, charlm_text
from metasched.inner_tasks.smoke import smoke_test_task


def test_smoke():
    cfg = CharLMConfig(context=8, batch_size=4, n_heads=2, n_val_windows=8, momentum=0.5)
    smoke_test_task(CharLMTask(cfg), lr=0.3, steps=15)


def test_text_split_and_hash():
    data = charlm_text()
    assert len(data["text"]) > 100_000 and len(data["sha256"]) == 64
    assert data["n_train"] == int(0.9 * len(data["text"]))
    task = CharLMTask(CharLMConfig(context=8, batch_size=2, n_val_windows=4))
    assert len(task.train_tokens) + len(task.val_tokens) == len(data["text"])
    assert task.text_sha256 == data["sha256"]
    rev = charlm_text(reverse=True)
    assert rev["vocab"] == data["vocab"] and rev["sha256"] != data["sha256"]


def test_model_is_causal():
    model = TinyTransformer(20, 10, d_model=16, n_layers=2, n_heads=2)
    x = torch.randint(20, (1, 10), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 20  # change the future only
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, :6], model(y)[0, :6])
    with pytest.raises(ValueError, match="n_heads"):
        TinyTransformer(20, 10, d_model=16, n_heads=3)


def test_config_and_family():
    with pytest.raises(ValueError, match="n_heads"):
        CharLMConfig(n_heads=3)
    with pytest.raises(ValueError, match="context"):
        CharLMConfig(context=0)
    fam = CharLMFamily(seed=0)
    cfg = fam.instance_config("test", 2)
    assert cfg == CharLMFamily(seed=0).instance_config("test", 2)
    assert cfg.name.startswith("charlm-c") and cfg.name.endswith("-test2") and not cfg.reverse
    assert fam.instance_config("shift", 0).reverse
    with pytest.raises(ValueError, match="heads"):
        CharLMFamily(heads=(3,))
    task = fam.make_task(CharLMConfig(context=8, batch_size=2, n_val_windows=2))
    task.reset(np.random.default_rng(0))
    assert abs(task.evaluate() - np.log(len(task.vocab))) < 2.0
