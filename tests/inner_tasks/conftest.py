"""Shared scaffolding of the inner-task tests: small planted NMF problems."""

import pytest

from metasched.inner_tasks.nmf import NMFConfig, NMFTask, planted_matrix


@pytest.fixture(scope="session")
def planted_nmf():
    """Factory of small planted NMF tasks, one per ``(m, n, rank, batch_size, grad_noise)``.

    Task ``i`` factorises a planted matrix (noise 0.1, seed ``10 + i``) at the planted rank;
    ``options`` (e.g. ``update_cap``) go to every :class:`NMFTask`. Each call builds fresh tasks.
    """

    def make(shapes, **options):
        tasks = []
        for i, (m, n, r, b, g) in enumerate(shapes):
            cfg = NMFConfig(m=m, n=n, rank=r, noise=0.1, grad_noise=g, batch_size=b, seed=10 + i)
            tasks.append(NMFTask(planted_matrix(cfg), r, batch_size=b, grad_noise=g, **options))
        return tasks

    return make
