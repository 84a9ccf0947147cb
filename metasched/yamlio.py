r"""YAML that reads numbers the way people write them.

PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent: ``1e-4``,
``3e-4`` and ``1.0e5`` are *strings* there, so ``learning_rate: 3e-4`` would reach the
optimizer as text. :class:`NumberLoader` is PyYAML's safe loader plus the YAML 1.2 float
forms (``1e-4``, ``1E5``, ``1.0e5``, ``.5e-3``); everything else reads as before.

Example:
    >>> load_yaml("lr: 3e-4\nsteps: 1e5\nname: 1e-4x")
    {'lr': 0.0003, 'steps': 100000.0, 'name': '1e-4x'}
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["NumberLoader", "load_yaml"]


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also resolves YAML 1.2 exponent floats such as ``1e-4``."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse one YAML document safely, with YAML 1.2 numbers (see the module docstring)."""
    return yaml.load(text, Loader=NumberLoader)  # a SafeLoader subclass: safe
