"""Uploaders for a flush that runs off the event loop: coroutine methods run on the loop.

``AsyncCloudSyncQueue.flush`` runs the queue's ordinary flush in a thread. It sees the
uploader through ``LoopUploader``: a method that is a coroutine function (or returns an
awaitable) is run on the event loop with ``asyncio.run_coroutine_threadsafe`` while the
flush thread waits for its result, so an aiohttp or aiomqtt client works on its own loop;
a plain method runs in the flush thread, off the loop. What the uploader returns or
raises reaches the flush unchanged, so it is classified exactly as for a sync uploader.
"""

import asyncio
import concurrent.futures
import functools
import inspect
from typing import Any, Awaitable, Callable, Dict, Tuple, Union

from .._upload_types import AsyncUploader, Uploader

# How often a flush thread waiting for an upload coroutine checks that its loop still runs:
# a loop stopped or closed without running the coroutine must not leave the thread waiting.
LOOP_CHECK_SECONDS = 0.5


class LoopUploader:
    """``uploader`` as a flush thread sees it: every attribute is the uploader's own, and
    each method runs on ``loop`` when it is asynchronous, in the calling thread otherwise."""

    def __init__(self, uploader: Union[Uploader, AsyncUploader], loop: asyncio.AbstractEventLoop) -> None:
        self._uploader = uploader
        self._loop = loop

    def __repr__(self) -> str:
        return f"LoopUploader({self._uploader!r})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._uploader, name)
        if not callable(attr):
            return attr
        on_loop = inspect.iscoroutinefunction(attr)

        # wraps: the flush inspects the signature (whether it takes ``idempotency_key``).
        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            if on_loop:
                return self._await_on_loop(attr, args, kwargs)
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._await_on_loop(lambda: result, (), {})
            return result

        return call

    def _await_on_loop(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Call ``func`` on the loop, await what it returns there and return the result here."""
        loop = self._loop
        if loop.is_closed():
            raise RuntimeError("the event loop of the async uploader is closed")
        future = asyncio.run_coroutine_threadsafe(_call_and_await(func, args, kwargs), loop)
        while not concurrent.futures.wait([future], LOOP_CHECK_SECONDS).done:
            if loop.is_closed() or not loop.is_running():
                future.cancel()
                raise RuntimeError("the event loop stopped while an upload was awaited on it")
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # Cancelled on the loop (the loop shutting down): the batch failed, and is kept.
            raise RuntimeError("the upload coroutine was cancelled") from None


async def _call_and_await(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        awaited: Awaitable[Any] = result
        result = await awaited
    return result


def check_uploader(uploader: Union[Uploader, AsyncUploader]) -> None:
    """Refuse, on the loop, an object that is no uploader (as ``maybe_flush`` would)."""
    if not callable(getattr(uploader, "post_batch", None)):
        raise TypeError(f"uploader must have a post_batch(payloads) method, got {type(uploader).__name__}")
