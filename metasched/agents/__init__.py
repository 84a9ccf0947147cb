"""Stable-Baselines3 meta-agents: training, checkpoints, hyperparameters and export."""

__all__: list[str] = []
