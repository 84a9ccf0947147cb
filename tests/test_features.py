import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from metasched.features import FEATURE_HIGH, FEATURE_LOW, FEATURE_NAMES, N_FEATURES, FeatureTracker
from metasched.signal import TrainingSignal

anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(1e-300, 1e300),
    st.just(0.0),
)


@given(
    lr0=st.floats(1e-12, 1e6),
    loss0=anything,
    updates=st.lists(
        st.tuples(anything, anything, anything, anything, anything, st.floats(0, 1)), max_size=8
    ),
)
def test_features_always_finite_and_in_bounds(lr0, loss0, updates):
    ft = FeatureTracker(1)
    obs = ft.start(lr=lr0, loss=loss0)
    assert obs.shape == (1, N_FEATURES) and obs.dtype == np.float32
    for lr, loss, grad, bound, val, frac in updates:
        obs = ft.update(
            lr=lr,
            loss=loss,
            frac_increasing=frac,
            grad_norm=grad,
            bound=bound,
            val_loss=val,
            budget_used=frac,
        )
        assert np.all(np.isfinite(obs))
        assert np.all(obs >= FEATURE_LOW) and np.all(obs <= FEATURE_HIGH)


def test_batched_tracker_equals_single_trackers():
    rng = np.random.default_rng(0)
    n, steps = 4, 6
    lrs, losses, grads = (
        rng.random((steps, n)),
        rng.random((steps, n)) + 0.1,
        rng.random((steps, n)),
    )
    batched = FeatureTracker(n)
    singles = [FeatureTracker(1) for _ in range(n)]
    batched.start(lr=np.full(n, 0.5), loss=np.ones(n), bound=np.full(n, 2.0))
    for s in singles:
        s.start(lr=0.5, loss=1.0, bound=2.0)
    for t in range(steps):
        ob = batched.update(
            lr=lrs[t],
            loss=losses[t],
            frac_increasing=0.5,
            grad_norm=grads[t],
            bound=2.0,
            val_loss=np.nan,
            budget_used=t / steps,
        )
        for i, s in enumerate(singles):
            os_ = s.update(
                lr=lrs[t, i],
                loss=losses[t, i],
                frac_increasing=0.5,
                grad_norm=grads[t, i],
                bound=2.0,
                val_loss=np.nan,
                budget_used=t / steps,
            )
            np.testing.assert_array_equal(ob[i], os_[0])


def test_masked_update_leaves_other_runs_untouched():
    ft = FeatureTracker(2)
    ft.start(lr=np.array([1.0, 1.0]), loss=np.array([1.0, 1.0]))
    before = ft.update(
        lr=1.0,
        loss=0.5,
        frac_increasing=0.0,
        grad_norm=1.0,
        bound=np.nan,
        val_loss=np.nan,
        budget_used=0.1,
    )
    after = ft.update(
        lr=2.0,
        loss=0.25,
        frac_increasing=0.0,
        grad_norm=1.0,
        bound=np.nan,
        val_loss=np.nan,
        budget_used=0.2,
        mask=np.array([True, False]),
    )
    np.testing.assert_array_equal(after[1], before[1])
    assert (
        after[0, FEATURE_NAMES.index("dloss_prev")] == before[0, FEATURE_NAMES.index("dloss_last")]
    )


def test_signal_path_matches_array_path():
    sig = TrainingSignal(
        step=50,
        budget=100,
        lr=0.1,
        train_loss=0.5,
        grad_norm=2.0,
        lr_bound=1.0,
        frac_increasing=0.2,
    )
    a, b = FeatureTracker(1), FeatureTracker(1)
    a.start_from_signal(TrainingSignal(step=0, budget=100, lr=0.1, train_loss=1.0, lr_bound=1.0))
    b.start(lr=0.1, loss=1.0, bound=1.0)
    oa = a.update_from_signal(sig)
    ob = b.update(
        lr=0.1,
        loss=0.5,
        frac_increasing=0.2,
        grad_norm=2.0,
        bound=1.0,
        val_loss=np.nan,
        budget_used=0.5,
    )
    np.testing.assert_array_equal(oa, ob)
    assert oa[0, FEATURE_NAMES.index("log_loss_rel")] == np.float32(np.log(0.5))
    assert oa[0, FEATURE_NAMES.index("log_lr_over_bound")] == np.float32(np.log(0.1))
    assert oa[0, FEATURE_NAMES.index("val_known")] == 0.0


def test_one_bound_feature_on_the_common_scale():
    assert "bound_known" not in FEATURE_NAMES and N_FEATURES == 11
    ft = FeatureTracker(2)
    obs = ft.start(lr=0.1, loss=1.0, bound=np.array([0.4, np.nan]))
    k = FEATURE_NAMES.index("log_lr_over_bound")
    assert obs[0, k] == np.float32(np.log(0.25)) and obs[1, k] == 0.0
