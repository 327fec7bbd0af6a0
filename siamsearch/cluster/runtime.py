"""Joining a Ray cluster, or starting a local one; the one place that says the extra is missing."""

from __future__ import annotations

import logging
import re
import socket

from ..core.errors import UsageError

INSTALL = "pip install 'siamsearch[cluster]'"
REACH_SECONDS = 5.0  # how long an --address may take to accept a TCP connection before the command gives up


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

    A local one is always new: RAY_ADDRESS and the last cluster `ray start` recorded are not joined, as the
    help says. num_cpus and object_store_memory size a local cluster only: a running one keeps its own.

    Raises:
        UsageError: nothing accepts a connection at address within REACH_SECONDS, or Ray cannot join it.
    """
    require()
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        if address:
            check_reachable(address)
        local = {} if address else {"num_cpus": num_cpus, "object_store_memory": object_store_memory}
        try:
            ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, configure_logging=True, **local)
        except (ConnectionError, ValueError) as exc:
            raise UsageError(f"cannot join Ray at {address or 'local'}: {_first_line(exc)}") from None
    context = DataContext.get_current()
    context.enable_progress_bars = False  # the commands draw their own, on stderr
    context.print_on_execution_start = False


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of host:port or scheme://host:port ([v6]:port too); None for a word such as auto."""
    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    return (match[1], int(match[2])) if match else None


def check_reachable(address: str, timeout: float = REACH_SECONDS) -> None:
    """Fail in one line, within timeout, where nothing listens at address: Ray itself retries for minutes.

    Raises:
        UsageError: the TCP connection is refused or times out (an address Ray resolves itself, auto, passes).
    """
    target = host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UsageError(f"no Ray cluster answers at {address} ({reason} within {timeout:g} s); start one there "
                         "with `ray start --head`, or leave out --address to start a local one") from None


def _first_line(exc: BaseException) -> str:
    """An exception's first line (Ray's messages run over several)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
