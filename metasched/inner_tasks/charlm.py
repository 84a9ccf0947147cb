"""A tiny causal transformer on next-character prediction over Python's own documentation.

Data: the text of :mod:`pydoc_data.topics` (the help topics shipped with every CPython
interpreter, ~465k characters), topics joined in sorted-key order; nothing is downloaded.
The vocabulary is the sorted set of characters of the whole text; the first 90 % is the
training text and the last 10 % the held-out text. :func:`charlm_text` returns the SHA-256 of
the text so runs can record exactly which text they used (it changes with the interpreter's
version). The ``shift`` split joins the topics in *reverse* order, so its held-out text is a
different set of topics.

Model: token + learned position embeddings, two pre-LayerNorm blocks (causal multi-head
self-attention through :func:`torch.nn.functional.scaled_dot_product_attention`, a GELU MLP
of width ``4 d``), a final LayerNorm and a linear read-out; ``d_model = 64``. Trained with
minibatch SGD (EMA momentum optional, :mod:`metasched.inner_tasks.torch_task`) on random
windows of the training text; :meth:`~CharLMTask.evaluate` is the mean next-character
cross-entropy (nats) over a fixed, evenly spaced set of held-out windows. An evaluation
family (about 200 steps/s on one core with the family's 16-character windows).

SGD on a transformer is progress-limited for a long time: with 32-64-character windows and
300 steps the tuned constant LR beat the tuned cosine (median 2.32 vs 2.49 nats), so decay
did not pay. ``CharLM-v1`` therefore trains 2,000 steps on short windows and small
minibatches, where the tuned cosine ends at a median validation loss of 1.819 nats against
1.845 for the best tuned constant LR, lower on 6 of 6 ``test`` instances
(``benchmarks/scheduling_matters_nn.py``).

Threads: the task uses the process's torch thread setting (the ``metasched`` command and
its worker processes set one thread); see :mod:`metasched.inner_tasks.torch_task`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from metasched.inner_tasks.base import NETWORK_LR_RANGE, TaskFamily, check_split
from metasched.inner_tasks.torch_task import (
    TorchTask,
    build_module,
    check_fraction,
    check_nonneg_float,
    check_positive_int,
    check_search_space,
    choice,
)

__all__ = ["CharLMConfig", "CharLMFamily", "CharLMTask", "TinyTransformer", "charlm_text"]

TRAIN_FRACTION = 0.9
#: Reference LR of the family (the env's ``lr_ref``): a good constant LR across instances.
CHARLM_REFERENCE_LR = 0.3


@functools.cache
def charlm_text(reverse: bool = False) -> dict[str, Any]:
    """Return the documentation text, its vocabulary, encoding and SHA-256.

    Args:
        reverse: join the topics in reverse sorted-key order (the ``shift`` data).

    Returns:
        A dict with ``text``, ``vocab`` (sorted characters of the text), ``tokens`` (int64
        tensor), ``n_train`` (tokens in the training part) and ``sha256`` (of the UTF-8 text).
    """
    from pydoc_data.topics import topics  # shipped with the interpreter

    keys = sorted(topics, reverse=reverse)
    text = "".join(topics[k] for k in keys)
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([lookup[c] for c in text], dtype=torch.int64)
    return {
        "text": text,
        "vocab": vocab,
        "tokens": tokens,
        "n_train": int(TRAIN_FRACTION * len(text)),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A causal character transformer (pre-LayerNorm blocks, learned positions).

    Args:
        vocab_size: number of characters.
        context: maximum sequence length.
        d_model: width of the residual stream.
        n_layers: transformer blocks.
        n_heads: attention heads (must divide ``d_model``).
    """

    def __init__(
        self, vocab_size: int, context: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model={d_model}, got {n_heads}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, time)`` token ids to ``(batch, time, vocab)`` logits."""
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@dataclass(frozen=True, slots=True)
class CharLMConfig:
    """One character-LM instance.

    Attributes:
        context: characters per training window.
        batch_size: windows per minibatch.
        n_heads: attention heads (divides ``d_model``).
        d_model: residual width.
        n_layers: transformer blocks.
        init_scale: multiplier of the initialisation standard deviations.
        momentum: EMA momentum in ``[0, 1)``.
        reverse: join the topics in reverse order (another held-out text).
        n_val_windows: held-out windows :meth:`CharLMTask.evaluate` averages over.
        weight_decay: L2 coefficient.
        split: the family split the instance came from (``custom`` for hand-made ones).
        index: index of the instance in its split.
    """

    context: int = 64
    batch_size: int = 16
    n_heads: int = 4
    d_model: int = 64
    n_layers: int = 2
    init_scale: float = 1.0
    momentum: float = 0.0
    reverse: bool = False
    n_val_windows: int = 64
    weight_decay: float = 0.0
    split: str = "custom"
    index: int = 0

    def __post_init__(self) -> None:
        for f in ("context", "batch_size", "n_heads", "d_model", "n_layers", "n_val_windows"):
            check_positive_int(f, getattr(self, f))
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model={self.d_model}, got {self.n_heads}")
        check_nonneg_float("init_scale", self.init_scale)
        check_nonneg_float("weight_decay", self.weight_decay)
        check_fraction("momentum", self.momentum)
        if not isinstance(self.reverse, bool):
            raise ValueError(f"reverse must be a bool, got {self.reverse!r}")

    @property
    def name(self) -> str:
        """Deterministic name, e.g. ``charlm-c64-b16-h4-d64-l2-i1.00-m0.00-fwd-test3``."""
        wd = f"-wd{self.weight_decay:g}" if self.weight_decay else ""
        return (
            f"charlm-c{self.context}-b{self.batch_size}-h{self.n_heads}-d{self.d_model}"
            f"-l{self.n_layers}-i{self.init_scale:.2f}-m{self.momentum:.2f}"
            f"-{'rev' if self.reverse else 'fwd'}{wd}-{self.split}{self.index}"
        )


class CharLMTask(TorchTask):
    """The tiny transformer of one :class:`CharLMConfig` on the documentation text.

    Example:
        >>> import numpy as np
        >>> task = CharLMTask(CharLMConfig(context=16, batch_size=4, n_val_windows=4))
        >>> task.reset(np.random.default_rng(0))
        >>> before = task.evaluate()
        >>> stats = task.train(20, lr=0.3)
        >>> stats.diverged, task.evaluate() < before
        (False, True)
    """

    def __init__(
        self,
        config: CharLMConfig,
        *,
        divergence_factor: float = 1e3,
        reference_lr: float = CHARLM_REFERENCE_LR,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(config, CharLMConfig):
            raise ValueError(f"config must be a CharLMConfig, got {config!r}")
        super().__init__(
            name=config.name,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            init_scale=config.init_scale,
            divergence_factor=divergence_factor,
            reference_lr=reference_lr,
            num_threads=num_threads,
        )
        self.config = config
        data = charlm_text(config.reverse)
        self.vocab: str = data["vocab"]
        self.text_sha256: str = data["sha256"]
        tokens = data["tokens"]
        self.train_tokens = tokens[: data["n_train"]]
        self.val_tokens = tokens[data["n_train"] :]
        c = config.context
        if len(self.val_tokens) < c + 2:
            raise ValueError(f"context {c} is longer than the held-out text")
        self._offsets = torch.arange(c + 1)
        starts = torch.linspace(0, len(self.val_tokens) - c - 1, config.n_val_windows).long()
        windows = self.val_tokens[starts[:, None] + self._offsets]
        self._val_x, self._val_y = windows[:, :-1], windows[:, 1:]
        self.model = build_module(
            TinyTransformer,
            len(self.vocab),
            c,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
        )
        self._residual_scale = 1.0 / math.sqrt(2 * config.n_layers)
        self._setup()

    def init_parameter(self, name: str, param: torch.Tensor, gen: torch.Generator) -> None:
        """Weights ``N(0, init_scale^2 / fan_in)``; residual projections also ``/ sqrt(2 L)``."""
        if param.dim() >= 2:
            std = self.init_scale / math.sqrt(param.shape[-1])
            if name.endswith(("proj.weight", "fc2.weight")):
                std *= self._residual_scale
            nn.init.normal_(param, 0.0, std, generator=gen)
        else:
            super().init_parameter(name, param, gen)

    def batches_per_epoch(self) -> float:
        """Return training characters over characters per minibatch."""
        return len(self.train_tokens) / (self.config.batch_size * self.config.context)

    def draw_batches(self, n_steps: int) -> torch.Tensor:
        """Return window start positions of ``n_steps`` minibatches, uniform in the text."""
        high = len(self.train_tokens) - self.config.context - 1
        return torch.randint(high, (n_steps, self.config.batch_size), generator=self.data_gen)

    def batch_loss(self, draws: torch.Tensor, t: int) -> torch.Tensor:
        """Mean next-character cross-entropy over the windows of step ``t``."""
        windows = self.train_tokens[draws[t][:, None] + self._offsets]
        logits = self.model(windows[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())

    def validation_loss(self) -> float:
        """Mean next-character cross-entropy over the fixed held-out windows."""
        total = 0.0
        for i in range(0, len(self._val_x), 32):
            logits = self.model(self._val_x[i : i + 32])
            y = self._val_y[i : i + 32]
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        return total / self._val_y.numel()


class CharLMFamily(TaskFamily):
    """Character-LM instances (an evaluation family: tens of steps/s).

    ``train``, ``val`` and ``test`` share one distribution (disjoint seeds); ``shift`` uses the
    reverse-ordered text (another held-out set of topics), longer windows and smaller
    minibatches.

    Args:
        seed: family seed; instance ``i`` of a split is a pure function of (seed, split, i).
        contexts: window-length choices.
        batch_sizes: minibatch-size choices.
        heads: attention-head choices.
        init_scale: ``(low, high)`` range.
        momenta: choices of EMA momentum.
        reference_lr: the LR every instance reports as its ``default_lr``.
    """

    lr_range = NETWORK_LR_RANGE

    name = "charlm"
    pool_sizes = {"train": 2**31 - 1, "val": 50, "test": 50, "shift": 50}  # noqa: RUF012

    def __init__(
        self,
        seed: int = 0,
        *,
        contexts: tuple[int, ...] = (16,),
        batch_sizes: tuple[int, ...] = (4, 8),
        heads: tuple[int, ...] = (2, 4),
        init_scale: tuple[float, float] = (0.7, 1.3),
        momenta: tuple[float, ...] = (0.0, 0.5, 0.9),
        reference_lr: float = CHARLM_REFERENCE_LR,
    ) -> None:
        super().__init__(seed)
        self.reference_lr = check_search_space(
            reference_lr=reference_lr,
            choices={"contexts": contexts, "batch_sizes": batch_sizes, "heads": heads},
            momenta=momenta,
            ranges={"init_scale": init_scale},
        )
        for h in heads:
            if 64 % h:
                raise ValueError(f"heads must divide d_model=64, got {h}")
        base = {
            "contexts": tuple(contexts),
            "batch_sizes": tuple(batch_sizes),
            "heads": tuple(heads),
            "init_scale": tuple(init_scale),
            "momenta": tuple(momenta),
            "reverse": False,
        }
        self.spaces = {"train": base, "val": base, "test": base}
        self.spaces["shift"] = {
            **base,
            "contexts": tuple(sorted({2 * c for c in contexts})),
            "batch_sizes": tuple(sorted({max(1, b // 2) for b in batch_sizes})),
            "reverse": True,
        }

    def instance_config(self, split: str, index: int) -> CharLMConfig:
        """Return the config of instance ``index`` of ``split`` (pure in its arguments)."""
        check_split(split)
        rng = self.rng_for(split, index)
        s = self.spaces[split]
        return CharLMConfig(
            context=int(choice(rng, s["contexts"])),
            batch_size=int(choice(rng, s["batch_sizes"])),
            n_heads=int(choice(rng, s["heads"])),
            init_scale=round(float(rng.uniform(*s["init_scale"])), 2),
            momentum=float(choice(rng, s["momenta"])),
            reverse=bool(s["reverse"]),
            split=split,
            index=int(index),
        )

    def make_task(self, config: CharLMConfig, **kwargs: Any) -> CharLMTask:
        """Build the task of ``config`` (``kwargs``: e.g. ``divergence_factor``)."""
        kwargs.setdefault("reference_lr", self.reference_lr)
        return CharLMTask(config, **kwargs)
