"""Distilled rules: a shallow decision tree over the observation features, as a scheduler.

A rules file (JSON, written by ``metasched distill``) holds a binary decision tree over the
LR-control observation features and the header of the policy it was distilled from (action
mode, LR range, decision interval). :class:`RulesScheduler` replays it exactly as
:class:`~metasched.schedulers.learned.LearnedScheduler` replays a policy — same features,
same action-to-LR mapping — so a policy and its rules are compared like for like. The tree
reads the *raw* features (no normalisation), so its printed rules are readable as they are.

File layout::

    {"format": "metasched-rules", "version": 1,
     "header": {observation: {names}, action: {mode}, env_kwargs: {action, lr_range,
                init_lr}, decision_interval},
     "tree": {"feature": [...], "threshold": [...], "left": [...], "right": [...],
              "action": [...]},            # node i: leaf when left[i] == -1
     "source": {...}, "checksum": "<sha256 of the canonical JSON without this key>"}
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, ClassVar

import numpy as np

from metasched.actions import ACTION_MODES, DISCRETE_FACTORS
from metasched.atomic import atomic_open
from metasched.errors import ConfigError, ExportError
from metasched.features import FEATURE_NAMES
from metasched.schedulers.base import register
from metasched.schedulers.learned import LearnedScheduler

__all__ = ["RULES_FORMAT", "RulesScheduler", "TreePolicy", "rules_checksum", "write_rules"]

RULES_FORMAT = "metasched-rules"
RULES_VERSION = 1


def rules_checksum(doc: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``doc`` without its ``checksum`` key."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class TreePolicy:
    """A decision tree with the ``predict`` interface of a policy file (deterministic)."""

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        self.header: dict[str, Any] = doc["header"]
        self.checksum: str = doc["checksum"]
        tree = doc["tree"]
        try:
            self.feature = np.asarray(tree["feature"], dtype=np.int64)
            self.threshold = np.asarray(tree["threshold"], dtype=np.float64)
            self.left = np.asarray(tree["left"], dtype=np.int64)
            self.right = np.asarray(tree["right"], dtype=np.int64)
            self.action = [np.asarray(a) for a in tree["action"]]
        except (KeyError, TypeError, ValueError):
            raise ExportError(f"rules file {where!r}: malformed tree") from None
        n = self.feature.size
        sizes = {self.threshold.size, self.left.size, self.right.size, len(self.action)}
        nf = len(FEATURE_NAMES)
        internal = self.left >= 0
        ok = (
            n > 0
            and sizes == {n}
            and np.all((self.left < n) & (self.right < n))
            and np.all(self.right[internal] >= 0)
            and np.all(self.left[internal] > np.flatnonzero(internal))
            and np.all(self.right[internal] > np.flatnonzero(internal))
            and np.all((self.feature[internal] >= 0) & (self.feature[internal] < nf))
            and np.all(np.isfinite(self.threshold[internal]))
        )
        if not ok:
            raise ExportError(f"rules file {where!r}: malformed tree")

    def leaf(self, x: np.ndarray) -> int:
        """Index of the leaf that observation ``x`` (shape ``(F,)``) falls into."""
        node = 0
        while self.left[node] >= 0:
            go_left = x[self.feature[node]] <= self.threshold[node]
            node = int(self.left[node] if go_left else self.right[node])
        return node

    def predict(self, obs: np.ndarray, state: Any = None) -> tuple[np.ndarray, None]:
        """Actions for observations of shape ``(n, F)`` (as the policy file's ``predict``)."""
        x = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        return np.stack([self.action[self.leaf(row)] for row in x]), None


@register
class RulesScheduler(LearnedScheduler):
    """Distilled if/then rules of a learned policy (a ``metasched distill`` rules file).

    Behaves as the policy it came from would, with the tree in place of the network: same
    observation features, action mode, LR range and decision interval.

    Args:
        path: the rules file (JSON).
    """

    name = "rules"
    _file_kind: ClassVar[str] = "a rules file written by metasched distill"
    _has_pretrained: ClassVar[bool] = False

    def __init__(self, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(path=path)

    @classmethod
    def pretrained(cls, name: str = "universal") -> RulesScheduler:
        """Rules are distilled by the user: none ship (raises :class:`ConfigError`)."""
        raise ConfigError(
            f"no rules ship with metasched (asked for {name!r}); distil them from a policy "
            "with 'metasched distill'"
        )

    def _load_policy(self, where: str) -> TreePolicy:
        try:
            with open(where, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise ExportError(f"rules file not found: {where!r}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"rules file {where!r} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != RULES_FORMAT:
            raise ExportError(f"{where!r} is not a metasched rules file")
        if doc.get("version") != RULES_VERSION:
            raise ExportError(
                f"rules file {where!r} has version {doc.get('version')!r}; "
                f"this metasched reads version {RULES_VERSION}"
            )
        if doc.get("checksum") != rules_checksum(doc):
            raise ExportError(f"rules file {where!r} is corrupt (checksum mismatch)")
        header = doc.get("header")
        if not isinstance(header, dict) or header.get("action", {}).get("mode") not in ACTION_MODES:
            raise ExportError(f"rules file {where!r}: missing or invalid header")
        return TreePolicy(doc, where)

    def _configure(self, header: dict[str, Any], where: str) -> None:
        super()._configure(header, where)
        mode = self.action_mode
        for a in self.policy.action:
            if mode in DISCRETE_FACTORS:
                good = a.ndim == 0 and 0 <= int(a) < len(DISCRETE_FACTORS[mode])
            else:
                good = a.ndim == 1 and bool(np.all(np.abs(a) <= 1.0))
            if not good:
                raise ExportError(f"rules file {where!r}: leaf action {a.tolist()!r} invalid")


def write_rules(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    tree: dict[str, list[Any]],
    source: dict[str, Any],
) -> str:
    """Write a rules file atomically; return its checksum."""
    doc: dict[str, Any] = {
        "format": RULES_FORMAT,
        "version": RULES_VERSION,
        "header": header,
        "tree": tree,
        "source": source,
    }
    doc["checksum"] = rules_checksum(doc)
    with atomic_open(path) as fh:
        json.dump(doc, fh, indent=1, allow_nan=False)
    return doc["checksum"]

