"""A task family whose instances are drawn from several registered families.

Agents meant to generalise across problems train on :class:`MixedFamily` (the env id
``metasched/Mixed-v1``): instance ``i`` of a split first picks a member family (seeded by
``(seed, split, i)``), then is instance ``i`` of that family's same split, so the mixed
``val``, ``test`` and ``shift`` splits inherit the members' disjoint seeds and shifted
distributions. The observation features are scale-free, so one policy can serve all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metasched.errors import UnknownNameError, did_you_mean
from metasched.inner_tasks.base import NETWORK_LR_RANGE, InnerTask, TaskFamily, check_split

__all__ = ["DEFAULT_MEMBERS", "MixedConfig", "MixedFamily"]

#: Members of the default mixture: the cheap families (fashion and charlm are for evaluation).
DEFAULT_MEMBERS: tuple[str, ...] = ("nmf", "mlp", "mnist1d")


@dataclass(frozen=True, slots=True)
class MixedConfig:
    """An instance of a member family.

    Attributes:
        family: registered name of the member family.
        config: that family's instance config.
    """

    family: str
    config: Any

    @property
    def name(self) -> str:
        """The member instance's name (already unique and deterministic)."""
        return str(self.config.name)


class MixedFamily(TaskFamily):
    """Instances drawn from several task families.

    Args:
        seed: family seed, also the seed of every member family.
        families: registered family names to mix.
        weights: relative sampling weights (default: uniform).
        family_kwargs: per-member constructor arguments, e.g. ``{"mlp": {"depths": [1]}}``.
    """

    #: One range for every member (mostly networks), as multiples of the reference LR.
    lr_range = NETWORK_LR_RANGE

    name = "mixed"

    def __init__(
        self,
        seed: int = 0,
        *,
        families: tuple[str, ...] | list[str] = DEFAULT_MEMBERS,
        weights: tuple[float, ...] | list[float] | None = None,
        family_kwargs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(seed)
        from metasched.inner_tasks import TASK_FAMILIES  # the registry imports this module

        families = tuple(families)
        if not families:
            raise ValueError("families must name at least one family, got ()")
        if len(set(families)) != len(families):
            raise ValueError(f"families must not repeat, got {families!r}")
        for f in families:
            if f == self.name:
                raise ValueError("a mixed family cannot contain 'mixed'")
            if f not in TASK_FAMILIES:
                raise UnknownNameError(did_you_mean(f, TASK_FAMILIES, "task family"))
        family_kwargs = dict(family_kwargs or {})
        unknown = set(family_kwargs) - set(families)
        if unknown:
            raise ValueError(f"family_kwargs names families not mixed: {sorted(unknown)}")
        if weights is None:
            weights = (1.0,) * len(families)
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(families),) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(
                f"weights must be {len(families)} finite non-negative numbers, got {weights!r}"
            )
        if not w.sum() > 0:
            raise ValueError(f"weights must not all be zero, got {weights!r}")
        self.families = families
        self.weights = tuple(float(x) for x in w / w.sum())
        self.members: dict[str, TaskFamily] = {
            f: TASK_FAMILIES[f](seed, **family_kwargs.get(f, {})) for f in families
        }
        self.pool_sizes = {
            split: min(m.pool_sizes[split] for m in self.members.values())
            for split in ("train", "val", "test", "shift")
        }

    def instance_config(self, split: str, index: int) -> MixedConfig:
        """Pick a member family for instance ``index`` and return its instance ``index``."""
        check_split(split)
        rng = self.rng_for(split, index)
        member = self.families[int(rng.choice(len(self.families), p=self.weights))]
        return MixedConfig(member, self.members[member].instance_config(split, index))

    def make_task(self, config: MixedConfig, **kwargs: Any) -> InnerTask:
        """Build the member task of ``config`` (``kwargs`` go to the member's ``make_task``)."""
        if not isinstance(config, MixedConfig) or config.family not in self.members:
            raise ValueError(f"config must be a MixedConfig of {self.families}, got {config!r}")
        return self.members[config.family].make_task(config.config, **kwargs)

    def __repr__(self) -> str:
        w = ", ".join(f"{f}={p:.2f}" for f, p in zip(self.families, self.weights, strict=True))
        return f"MixedFamily(seed={self.seed}, {w})"
