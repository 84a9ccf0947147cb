"""One local Ray instance for the whole session: 2 CPUs, no dashboard, this machine only."""

import signal

import pytest

TEST_SECONDS = 180  # every Ray test is bounded: a hung cluster fails the test, not the suite


@pytest.fixture(scope="session")
def ray_local():
    """Start a local Ray instance (never joins a cluster), yield its address, shut it down."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # pragma: no cover - someone else's instance
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _time_bound():
    def expire(signum, frame):
        raise TimeoutError(f"Ray test exceeded {TEST_SECONDS} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
