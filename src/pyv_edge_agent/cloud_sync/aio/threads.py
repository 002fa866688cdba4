"""Bridges between an asyncio event loop and the threads that do the queue's blocking work.

A call handed to a thread here always runs to completion: cancelling the awaiting task
only stops the waiting (``asyncio.wrap_future`` would instead cancel work not yet
started, so whether it happened would depend on timing).
"""

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def settle(future: "asyncio.Future[T]", outcome: "concurrent.futures.Future[T]") -> None:
    """Copy a finished thread's ``outcome`` into ``future`` unless nobody waits any more."""
    if future.done():
        return
    error = outcome.exception()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome.result())


def report_to(loop: asyncio.AbstractEventLoop, future: "asyncio.Future[T]") -> Callable[[Any], None]:
    """A done-callback for a ``concurrent.futures.Future`` that settles ``future`` on ``loop``."""

    def done(outcome: "concurrent.futures.Future[T]") -> None:
        try:
            loop.call_soon_threadsafe(settle, future, outcome)
        except RuntimeError:
            pass  # the loop has closed: nobody is waiting for this any more

    return done


def off_loop(executor: concurrent.futures.Executor, func: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
    """Run ``func(*args)`` in ``executor``; the returned future of the running loop gets its
    outcome. Cancelling that future does not stop ``func``."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[T]" = loop.create_future()
    executor.submit(func, *args).add_done_callback(report_to(loop, future))
    return future


def in_thread(func: Callable[[], T], name: str) -> "asyncio.Future[T]":
    """Run ``func`` in a new thread of its own (for work that waits for the executors)."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[T]" = loop.create_future()
    outcome: "concurrent.futures.Future[T]" = concurrent.futures.Future()
    outcome.add_done_callback(report_to(loop, future))

    def run() -> None:
        try:
            outcome.set_result(func())
        except BaseException as exc:  # handed to the awaiting coroutine
            outcome.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class LoopWake(threading.Event):
    """A ``threading.Event`` that also sets an ``asyncio.Event`` on its loop, so that a
    thread that wakes sync loops (a critical enqueue) wakes a coroutine too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        super().__init__()
        self._loop = loop
        self.event = event

    def set(self) -> None:
        """Set both events; never raises, even once the loop has closed."""
        super().set()
        try:
            self._loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass  # the loop has closed: its worker is gone
