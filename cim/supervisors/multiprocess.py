"""``cim-server --workers N``: N worker processes sharing the client port (SO_REUSEPORT).

Each worker is its own node: its own HTTP port (``--http-port + i``), registry entry
and bus channel, so the bus carries messages between users on different workers
exactly as between hosts. That is also how one host holds more connections than one
process's open-files limit allows. The supervisor restarts a worker that dies and, on
SIGTERM or SIGINT, has every worker drain (stop accepting, tell clients, close,
unregister) before it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from types import FrameType

from cim.backends.registry import in_process
from cim.config import Config
from cim.metrics import SharedMetrics

log = logging.getLogger("cim.supervisor")

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>

# spawn, not fork: a worker must not inherit the supervisor's threads or loop state.
_spawn = multiprocessing.get_context("spawn")


def worker_config(config: Config, index: int) -> Config:
    return dataclasses.replace(config, http_port=config.http_port + index)


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when the supervisor dies, even by SIGKILL,
    so no worker outlives it holding the port and its users."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return  # not Linux: nothing to ask
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_worker(config: Config) -> None:
    from cim.run import run

    _die_with_parent()
    run(config, {"server"})


class Multiprocess:
    """Starts, restarts and drains the workers of one host."""

    def __init__(self, config: Config, restart_delay: float = 0.5) -> None:
        if config.workers > 1 and in_process(config):
            raise ValueError(
                "--workers > 1 needs --redis and --zk (a store and a discovery outside the process): each "
                "worker is its own node, and nodes find each other through ZooKeeper and exchange messages over Redis"
            )
        self.config = config
        self.restart_delay = restart_delay
        self.workers: list[SpawnProcess] = []
        self.restarts = 0
        self._should_exit = False

    def _start(self, index: int) -> SpawnProcess:
        process = _spawn.Process(
            target=_run_worker, args=(worker_config(self.config, index),), name=f"cim-worker-{index}"
        )
        process.start()
        log.info("worker %d started (pid %d)", index, process.pid)
        return process

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self._should_exit = True

    def run(self) -> None:
        """Sleep until a worker dies or a signal comes: no polling, so the supervisor
        costs no CPU while all is well (a 0.2 s poll cost ~0.8 ms/s on the dev VM)."""
        self.config.configure_logging()
        # Signals also write a byte here, which wakes wait() below (PEP 475 would
        # otherwise just resume it after the handler ran).
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        previous_wakeup = signal.set_wakeup_fd(wakeup_write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        metrics = SharedMetrics()  # every worker's /metrics serves all of them
        log.info("workers' metrics in %s", metrics.directory)
        try:
            self.workers = [self._start(i) for i in range(self.config.workers)]
            while not self._should_exit:
                wait([p.sentinel for p in self.workers] + [wakeup_read])
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_read, 512)
                for index, process in enumerate(self.workers):
                    if not process.is_alive() and not self._should_exit:
                        log.warning("worker %d (pid %s) exited with %s; restarting", index, process.pid, process.exitcode)
                        if process.pid is not None:
                            metrics.worker_died(process.pid)
                        time.sleep(self.restart_delay)
                        self.workers[index] = self._start(index)
                        self.restarts += 1
            self._drain()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wakeup_read)
            os.close(wakeup_write)
            metrics.close()

    def _drain(self) -> None:
        log.info("stopping %d workers", len(self.workers))
        for process in self.workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker drains its clients
        deadline = time.monotonic() + self.config.shutdown_timeout + 10
        for process in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
