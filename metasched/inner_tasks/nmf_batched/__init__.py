"""Many stochastic-NMF instances stepped together as one batched torch computation.

:class:`BatchedNMF` holds ``n_slots`` independent :class:`~metasched.inner_tasks.nmf.NMFTask`
problems, zero-padded to one common shape ``(M, N, R, Bmax)``, and advances all of them with
batched matrix products (``torch.bmm``) over a leading slot dimension, as a vectorised RL
environment needs. Each slot follows the single task's random streams draw for draw:

* :meth:`BatchedNMF.load` draws the initial factors and the two per-slot RNG seeds from the
  caller's generator in exactly the order of :meth:`NMFTask.reset`;
* every :meth:`BatchedNMF.train` call draws, per slot, one ``rng.random((n_steps, b))`` array
  of minibatch rows and (when ``grad_noise > 0``) one float32 ``torch.randn`` vector of the
  single task's length, so a slot and an :class:`NMFTask` reset from equal generators see the
  same minibatches and the same gradient noise.

With ``rng="shared"`` the batch draws instead, per call, once for all slots from its own
generators (seeded by ``rng_seed``): one uniform array gives every slot's minibatch rows,
and one pool of ``T + B`` steps of standard-normal noise gives every slot's gradient noise
(slot ``k`` reads a cyclic shift of the pool with a random sign). Each slot's stream is a
fixed function of the seed, the call sequence and its position, with the single task's
distribution (rows uniform, noise i.i.d. normal within the slot), but no longer the single
task's draws, and slots share shifted noise; the per-slot loop of draws disappears.

One kernel runs the steps (:func:`~metasched.inner_tasks.nmf_batched.kernel.run_steps`):
the single task's step in few tensor operations, with the normalisations folded into
per-slot rates and noise scales and divergence found after the call from logged norms. The
minibatches, the noise and every reported statistic are the single task's (same MDP, same
random streams); only rounding differs (float64: ~1e-6 relative), and a slot that diverges
keeps running to the end of the call, so its factors are undefined afterwards (it is
inactive until it is loaded again).

Padding is exact. Unused rows/columns of V, unused rank columns of W and rank rows of H, and
minibatch positions beyond a slot's ``batch_size`` all hold zeros that the updates keep at
zero: padded minibatch positions read a shared all-zero row of W and V (so their residual,
gradients and updates vanish), the gradient noise is zero on padding, and each slot is
normalised by its own ``1/n`` and ``1/(b n)``. Write-back goes through ``index_copy_`` with
unique targets only: a row drawn several times in one minibatch is written by its last draw
(as numpy's ``W[idx] = new`` does), and the other draws go to private scratch rows. A call
computes only the slots up to the last active one, so trailing empty slots cost nothing.

Padding every slot to a family's largest shape wastes most of the work, so
:class:`BucketedNMF` keeps one :class:`BatchedNMF` per *shape class*, each padded only to its
own box (see :mod:`~metasched.inner_tasks.nmf_batched.buckets`).

Modules: :mod:`.stats` (what a call reports, shared checks), :mod:`.streams` (the minibatch
and noise draws), :mod:`.kernel` (the step), :mod:`.batch` (:class:`BatchedNMF`: padded
storage, slots, bounds) and :mod:`.buckets` (shape classes).

Example:
    >>> import numpy as np
    >>> from metasched.inner_tasks.nmf import NMFTask
    >>> tasks = [NMFTask.from_matrix(np.ones((8, 6)), 2, batch_size=4),
    ...          NMFTask.from_matrix(np.ones((5, 9)), 3, batch_size=2)]
    >>> batch = BatchedNMF.from_tasks(tasks, [np.random.default_rng(i) for i in range(2)])
    >>> stats = batch.train(50, 0.5 * batch.lr_bound())
    >>> stats.n_done.tolist(), bool((batch.evaluate() < 0.05).all())
    ([50, 50], True)
"""

from metasched.inner_tasks.nmf_batched.batch import BatchedNMF
from metasched.inner_tasks.nmf_batched.buckets import BucketedNMF, box_cost, shape_classes
from metasched.inner_tasks.nmf_batched.stats import RNG_MODES, BatchedStepStats

__all__ = [
    "RNG_MODES",
    "BatchedNMF",
    "BatchedStepStats",
    "BucketedNMF",
    "box_cost",
    "shape_classes",
]
