"""Gymnasium environments over inner tasks, their registration and the batched vector env."""

from metasched.envs.lr_control import ACTION_MODES, DISCRETE_FACTORS, LRControlEnv, action_to_lr
from metasched.envs.registration import ENV_IDS, register_envs

__all__ = [
    "ACTION_MODES",
    "DISCRETE_FACTORS",
    "ENV_IDS",
    "LRControlEnv",
    "action_to_lr",
    "register_envs",
]
