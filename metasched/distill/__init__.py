"""Comparison harness, statistics, plots and distillation of learned policies into rules."""

from metasched.distill.sanity import SchedulingCheck, constant_vs_cosine

__all__ = ["SchedulingCheck", "constant_vs_cosine"]
