"""Joining a Ray cluster, or starting a local one; the one place that says the extra is missing."""

from __future__ import annotations

import logging

from ..errors import UsageError

INSTALL = "pip install 'siamsearch[cluster]'"


class ClusterExtraError(UsageError):
    """Ray or pyarrow is not installed: the cluster commands need the optional extra."""


def require() -> None:
    """Check that the cluster extra is installed before any stage module (which imports it) is loaded.

    Raises:
        ClusterExtraError: ray (with Ray Data) or pyarrow is missing.
    """
    try:
        import pyarrow  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        missing = (exc.name or "ray").split(".")[0]
        raise ClusterExtraError(f"the cluster commands need Ray and pyarrow ({missing} is missing): {INSTALL}") from None


def connect(address: str | None = None, *, num_cpus: int | None = None,
            object_store_memory: int | None = None) -> None:
    """Join the Ray cluster at address, or start a local one (address None); nothing when already joined.

    num_cpus and object_store_memory size a local cluster only: a running one keeps its own.
    """
    require()
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        local = {} if address else {"num_cpus": num_cpus, "object_store_memory": object_store_memory}
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True, **local)
    context = DataContext.get_current()
    context.enable_progress_bars = False  # the commands draw their own, on stderr
    context.print_on_execution_start = False
