"""The ``val`` split: disjoint seeds, same distribution as ``train``, old splits unchanged."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasched.inner_tasks import SPLITS, check_split, make_family

FAMILIES = ("nmf", "mlp", "mnist1d", "fashion", "charlm", "mixed")

# Names computed with the code before the val split existed: adding it changed no instance.
BEFORE_VAL = {
    "nmf": ("nmf-m270-n114-r8-s0.01-g0.52-b16-train0", "nmf-m204-n139-r12-s0.16-g1.93-b32-test0",
            "nmf-m900-n410-r15-s0.37-g3.06-b32-shift7"),
    "mlp": ("mlp-w128-d2-b16-i0.54-m0.00-n0.10-x0.00-train0",
            "mlp-w64-d3-b32-i1.30-m0.50-n0.29-x0.00-test0",
            "mlp-w256-d4-b4-i1.94-m0.90-n0.41-x0.39-shift7"),
    "mnist1d": ("mnist1d-cnn-w32-b16-i0.54-m0.00-n0.10-t2000-stand-train0",
                "mnist1d-cnn-w32-b32-i1.30-m0.50-n0.29-t4000-stand-test0",
                "mnist1d-cnn-w32-b4-i1.08-m0.90-n0.43-t2000-noisy-shift7"),
    "charlm": ("charlm-c16-b8-h4-d64-l2-i0.86-m0.00-fwd-train0",
               "charlm-c16-b8-h4-d64-l2-i1.03-m0.00-fwd-test0",
               "charlm-c32-b4-h4-d64-l2-i1.18-m0.50-rev-shift7"),
    "fashion": ("fashion-c8-b32-i0.77-m0.00-n0.00-t2000-v500-train0",
                "fashion-c8-b32-i1.06-m0.00-n0.19-t5000-v500-test0",
                "fashion-c8-b16-i1.30-m0.50-n0.31-t2500-v500-shift7"),
}  # fmt: skip


def _name(cfg):
    return cfg.name if hasattr(cfg, "name") else cfg.config.name  # mixed wraps a member's


def test_val_is_a_split_with_its_own_id():
    assert "val" in SPLITS
    ids = [check_split(s) for s in SPLITS]
    assert len(set(ids)) == len(ids)
    assert (check_split("train"), check_split("test"), check_split("shift")) == (0, 1, 2)
    with pytest.raises(ValueError, match="'valid'"):
        check_split("valid")


@pytest.mark.parametrize("family", sorted(BEFORE_VAL))
def test_existing_instances_are_unchanged(family):
    fam = make_family(family, 0)
    got = (
        _name(fam.instance_config("train", 0)),
        _name(fam.instance_config("test", 0)),
        _name(fam.instance_config("shift", 7)),
    )
    assert got == BEFORE_VAL[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_val_has_a_pool_and_trains_distribution(family):
    fam = make_family(family, 0)
    assert 0 < fam.pool_sizes["val"] <= fam.pool_sizes["train"]
    for attr in ("spaces", "ranges", "batch_sizes"):
        table = getattr(fam, attr, None)
        if table is not None:
            assert table["val"] == table["train"], attr
    assert _name(fam.instance_config("val", 3)).endswith("val3")


@settings(max_examples=25, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 2**20),
    i=st.integers(0, 10_000),
    j=st.integers(0, 10_000),
)
def test_val_is_deterministic_and_disjoint_from_the_other_splits(family, seed, i, j):
    fam = make_family(family, seed)
    assert fam.instance_config("val", i) == make_family(family, seed).instance_config("val", i)
    val = fam.rng_for("val", i).integers(2**62, size=4)
    for split in ("train", "test", "shift"):
        other = fam.rng_for(split, j).integers(2**62, size=4)
        assert not np.array_equal(val, other)  # distinct seed streams, whatever the indices


def test_val_instances_differ_from_train_and_test_instances():
    fam = make_family("nmf", 0)
    val = {fam.instance_config("val", i).name.rsplit("-", 1)[0] for i in range(50)}
    for split in ("train", "test"):
        other = {fam.instance_config(split, i).name.rsplit("-", 1)[0] for i in range(50)}
        assert len(val & other) <= 1  # the discrete NMF space allows a rare exact repeat
