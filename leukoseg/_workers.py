"""Worker processes for batches: one pool recipe for the CLI's images and the experiment's segmentation.

A pool left to itself on Ctrl-C finishes every queued image before the interrupt is seen (a long wait),
and on SIGTERM its workers outlive the parent and go on writing. :func:`process_pool` cancels what has not
started and stops the workers whenever the block is left by an exception, so an interrupted batch stops
at once and leaves nothing running behind it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["init_worker", "process_pool", "terminate_on_sigterm"]


def init_worker() -> None:
    """Set up a worker process: one OpenCV thread, and Ctrl-C left to the parent.

    One process per core already; OpenCV's own threads would oversubscribe. A terminal's Ctrl-C reaches
    every process of the group: the workers ignore it, and the parent stops them (:func:`process_pool`).
    """
    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A ``spawn`` process pool of `workers` processes that is torn down at once if the block fails.

    Parameters
    ----------
    workers : int
        Number of worker processes.

    Yields
    ------
    concurrent.futures.ProcessPoolExecutor
        The pool. Left normally, it is shut down after its work; left by an exception (an interrupt
        included), its pending tasks are cancelled and its workers terminated before the exception goes on.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: safe with OpenCV's and BLAS's threads, the same on every platform.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker)
    try:
        yield pool
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the pool's pending tasks and terminate its workers (the ones running an image included)."""
    # The workers and the pool's own thread, before shutdown forgets them.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    # The pool's thread reaps the stopped workers; joining them here as well would race with it for their exit
    # status (the loser sees a dead worker as alive). Waiting for the thread leaves every worker known gone.
    if manager is not None:
        manager.join(timeout=10)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, so that a batch is stopped as by Ctrl-C.

    Only in the main thread (signal handlers can be set nowhere else); the previous handler is restored.

    Yields
    ------
    None
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
