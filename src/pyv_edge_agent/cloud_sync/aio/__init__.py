"""An asyncio face for the queue: ``AsyncCloudSyncQueue`` and ``AsyncSyncWorker``.

No call blocks the event loop for I/O: SQLite work runs in the queue's own threads, and
``enqueue`` calls made by many coroutines at once are committed together (one transaction
and one fsync for all that are waiting, per priority and TTL among them), each caller
getting its own id once its item is durable. Underneath is an ordinary ``CloudSyncQueue``,
so the same file can be shared with sync users in other threads and processes.

Cancellation stops the waiting, never the work. A call has been handed to the queue's
threads as soon as its coroutine starts (at once, for ``await queue.enqueue(...)``); it
then runs to completion whatever happens to the awaiting task:

- a cancelled ``enqueue``/``enqueue_many`` stores its items all the same, and only the
  ids are lost to the caller (a task cancelled before its coroutine ever ran stores
  nothing); ``close()`` returns only after they are stored;
- a cancelled ``ack``/``nack``/``purge_expired`` still applies;
- a cancelled ``flush`` starts no further batch; the batch in flight is still delivered
  and acked or nacked (its upload coroutine too runs to completion on the loop), so
  nothing is lost or acked twice, and the items not sent yet stay queued.
"""

from .queue import AsyncCloudSyncQueue
from .worker import AsyncSyncWorker

__all__ = ["AsyncCloudSyncQueue", "AsyncSyncWorker"]
