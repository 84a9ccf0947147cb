"""RulesScheduler: a distilled decision tree runs like the policy it came from."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasched.errors import ConfigError, ExportError
from metasched.features import FEATURE_NAMES
from metasched.inner_tasks.nmf import NMFFamily
from metasched.schedulers import RulesScheduler, make_scheduler, run_schedule, scheduler_from_state
from metasched.schedulers.rules import write_rules
from metasched.signal import TrainingSignal

HEADER = {
    "observation": {"names": list(FEATURE_NAMES)},
    "action": {"mode": "discrete3"},
    "env_kwargs": {"action": "discrete3", "lr_range": [1e-3, 64.0], "init_lr": 1.0},
    "decision_interval": 50,
}
BUDGET = FEATURE_NAMES.index("budget_used")
# double the LR in the first 33% of the budget, halve it after 62%, keep it between
TREE = {
    "feature": [BUDGET, -1, BUDGET, -1, -1],
    "threshold": [0.33, 0.0, 0.62, 0.0, 0.0],
    "left": [1, -1, 3, -1, -1],
    "right": [2, -1, 4, -1, -1],
    "action": [1, 2, 1, 1, 0],
}


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.json"
    write_rules(path, HEADER, TREE, {"note": "hand-made"})
    return path


def test_tree_decides_the_lr(rules_file):
    task = NMFFamily(seed=0).make("test", 0)
    tr = run_schedule(task, make_scheduler("rules", path=str(rules_file)), budget=1000,
                      interval=50, seed=0)  # fmt: skip
    lr = tr["lr"][1:]  # lr[i]: the LR of interval i + 1, decided at step 50 * i

    def factor(used):
        return 2.0 if used <= 0.33 else (1.0 if used <= 0.62 else 0.5)

    expected = [lr[0]]  # 2 x the reference LR: the first decision, at budget_used 0
    for i in range(1, len(lr)):
        # the policy's LR range: [1e-3, 64] x the reference LR (= lr[0] / 2)
        expected.append(min(expected[-1] * factor(50 * i / 1000), 64 * lr[0] / 2))
    np.testing.assert_allclose(lr, expected, rtol=1e-12)


def test_contract_bounds_and_json_resume(rules_file):
    task = NMFFamily(seed=0).make("test", 1)
    full = run_schedule(task, make_scheduler("rules", path=str(rules_file)), budget=1000,
                        interval=50, seed=3)  # fmt: skip
    s = make_scheduler("rules", path=str(rules_file))
    from metasched.schedulers import Run

    run = Run(task, s, budget=1000, interval=50)
    run.start(3)
    for _ in range(7):
        run.step()
    run.scheduler = scheduler_from_state(json.loads(json.dumps(s.state_dict())))
    rest = run.run()
    assert rest["lr"][1:].tolist() == full["lr"][1:].tolist()


@given(st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=30), st.floats(1e-3, 10.0))
def test_lr_stays_finite_and_in_range(rules_file_path, losses, base):
    s = RulesScheduler(path=rules_file_path)
    lo, hi = s.bounds(base)
    lr = s.reset(base)
    for i, loss in enumerate(losses):
        lr = s.step(TrainingSignal(step=(i + 1) * 50, budget=50 * len(losses), lr=lr,
                                   train_loss=loss))  # fmt: skip
        assert math.isfinite(lr) and lo * (1 - 1e-12) <= lr <= hi * (1 + 1e-12)


@pytest.fixture(scope="module")
def rules_file_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "rules.json"
    write_rules(path, HEADER, TREE, {})
    return str(path)


def test_bad_files(tmp_path, rules_file):
    with pytest.raises(ConfigError, match="needs path"):
        RulesScheduler()
    with pytest.raises(ExportError, match="not found"):
        RulesScheduler(path=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        RulesScheduler(path=bad)
    doc = json.loads(rules_file.read_text())
    doc["tree"]["threshold"][0] = 0.9  # edited by hand: the checksum no longer matches
    bad.write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="checksum"):
        RulesScheduler(path=bad)
    for tree, match in [
        ({**TREE, "action": [1, 7, 1, 1, 0]}, "leaf action"),
        ({**TREE, "left": [0, -1, 3, -1, -1]}, "malformed"),
        ({**TREE, "feature": [99, -1, BUDGET, -1, -1]}, "malformed"),
    ]:
        write_rules(bad, HEADER, tree, {})
        with pytest.raises(ExportError, match=match):
            RulesScheduler(path=bad)
    doc = json.loads(rules_file.read_text())
    doc["version"] = 99
    bad.write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="version"):
        RulesScheduler(path=bad)
