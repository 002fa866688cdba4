"""The flush policy behind ``CloudSyncQueue.maybe_flush``.

A flush claims batches in priority order (leasing them so that no other flusher sends
them meanwhile), hands each to the uploader and settles the outcome in one transaction:

- accepted: acked and counted;
- transient (no connection, timeout, 408, 425, 429, 5xx, an exception, ``False``, any
  status not named below): nacked with exponential backoff and full jitter, honouring
  ``Retry-After``; the call ends;
- too large (413): split in halves that are sent at once; a single item goes to the
  dead-letter table;
- rejected (400, 422, or indices in an ``UploadResult``): split until the bad items are
  alone; an item rejected ``max_attempts`` times goes to the dead-letter table;
- credentials (401, 403): every item is kept and the flush backs off long.

Retried batches keep their composition, so that a retry carries the same
``Idempotency-Key`` and a server can drop the duplicate a lost response causes: the items
of a batch get one shared ``next_retry_at`` (the lease, then the backoff), unique to that
batch, and a claim never mixes such a group with other items. Items never tried
(``next_retry_at`` 0) are batched freely.
"""

import hashlib
import inspect
import logging
import math
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

from . import _codec, _seal
from ._errors import DecryptionError
from ._policy import FlushPolicy, LinkState
from ._sql import (
    ACK_SQL,
    ADD_COUNTER_SQL,
    COUNT_REJECTION_SQL,
    DELETE_EXPIRED_LEASES_SQL,
    DELETE_LEASE_SQL,
    EXTEND_LEASE_SQL,
    FORGET_REJECTIONS_SQL,
    INSERT_LEASE_SQL,
    MOVE_TO_DEAD_SQL,
    NACK_SQL,
    RELEASE_SQL,
    RESTORE_RETRY_SQL,
    SELECT_CLAIM_SQL,
    SELECT_EXHAUSTED_SQL,
    SELECT_GROUP_SQL,
    SET_COUNTER_SQL,
    write_transaction,
)
from ._store import Store
from ._upload_types import OutcomeKind, UploadError, UploadResult

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

ACCEPTED = OutcomeKind.ACCEPTED
TRANSIENT = OutcomeKind.TRANSIENT
TOO_LARGE = OutcomeKind.TOO_LARGE
REJECTED = OutcomeKind.REJECTED
CREDENTIALS = OutcomeKind.CREDENTIALS

TRANSIENT_STATUSES = frozenset({408, 425, 429})
REJECTED_STATUSES = frozenset({400, 422})
CREDENTIAL_STATUSES = frozenset({401, 403})
# A server asking for more than a day is more likely misconfigured than serious.
MAX_RETRY_AFTER = 86400.0
# An async uploader given to the sync flush is refused, never taken as accepting.
ASYNC_HINT = "an async uploader is flushed by pyv_edge_agent.cloud_sync.aio.AsyncCloudSyncQueue.flush"
# Error text stored with items and counters stays short.
MAX_ERROR_CHARS = 500

# (id, stored text as bytes, retry_count, priority, next_retry_at)
Row = Tuple[int, bytes, int, int, float]


def classify(status: Optional[int]) -> OutcomeKind:
    """Return the failure class of an HTTP status (None: no response at all)."""
    if status is None or status in TRANSIENT_STATUSES or status >= 500:
        return TRANSIENT
    if status == 413:
        return TOO_LARGE
    if status in REJECTED_STATUSES:
        return REJECTED
    if status in CREDENTIAL_STATUSES:
        return CREDENTIALS
    if 200 <= status < 300:
        return ACCEPTED
    # Anything else (a redirect, 404, 409 ...) is most likely a configuration problem
    # that an operator will fix: keep the data and retry later.
    return TRANSIENT


def idempotency_key(queue_id: str, ids: Sequence[int]) -> str:
    """The ``Idempotency-Key`` of a batch: the same items from the same queue file give the same key."""
    digest = hashlib.sha256(queue_id.encode() + b":" + ",".join(map(str, ids)).encode())
    return digest.hexdigest()[:40]


@dataclass
class Outcome:
    """What became of one upload attempt, by index into the part that was sent."""

    kind: OutcomeKind
    rejected: Sequence[int] = ()
    retry: Sequence[int] = ()
    status: Optional[int] = None
    error: Optional[str] = None
    retry_after: Optional[float] = None


def _outcome_of_result(result: Any, count: int) -> Outcome:
    if inspect.isawaitable(result):
        # Never awaited, so nothing was sent: counting it as accepted would drop the batch.
        if inspect.iscoroutine(result):
            result.close()
        return Outcome(TRANSIENT, error=f"the uploader returned an awaitable; {ASYNC_HINT}")
    if result is False:
        return Outcome(TRANSIENT, error="the uploader returned False")
    if not isinstance(result, UploadResult):
        return Outcome(ACCEPTED)
    rejected, retry = list(result.rejected), list(result.retry)
    indices = rejected + retry
    if len(set(indices)) != len(indices) or not all(type(i) is int and 0 <= i < count for i in indices):
        return Outcome(TRANSIENT, error=f"the uploader returned an UploadResult with bad indices for {count} items")
    return Outcome(ACCEPTED, rejected, retry, result.status, result.error, result.retry_after)


def send(post: Callable[[List[bytes], str], Any], texts: List[bytes], key: str) -> Outcome:
    """Upload one part and classify what happened; never raises an ``Exception``."""
    try:
        result = post(texts, key)
    except UploadError as exc:
        return Outcome(classify(exc.status), status=exc.status, error=str(exc), retry_after=exc.retry_after)
    except Exception as exc:  # any failure of a user-supplied uploader is a failed batch
        return Outcome(TRANSIENT, error=f"{type(exc).__name__}: {exc}")
    return _outcome_of_result(result, len(texts))


def poster(uploader: Any) -> Callable[[List[bytes], str], Any]:
    """Return how to hand stored texts to ``uploader``: spliced into a body when it takes
    one (``post_encoded_batch``), else decoded for ``post_batch``."""
    post_batch = getattr(uploader, "post_batch", None)
    if not callable(post_batch):
        raise TypeError(f"uploader must have a post_batch(payloads) method, got {type(uploader).__name__}")
    post_encoded = getattr(uploader, "post_encoded_batch", None)
    for name, method in (("post_batch", post_batch), ("post_encoded_batch", post_encoded)):
        if inspect.iscoroutinefunction(method):
            raise TypeError(f"uploader.{name} is a coroutine function; {ASYNC_HINT}")
    if not callable(post_encoded):
        return lambda texts, key: post_batch([_codec.decode_payload(text) for text in texts])
    if _takes_idempotency_key(post_encoded):
        return lambda texts, key: post_encoded(_codec.splice_body(texts), len(texts), idempotency_key=key)
    return lambda texts, key: post_encoded(_codec.splice_body(texts), len(texts))


def _takes_idempotency_key(method: Callable[..., Any]) -> bool:
    """Whether ``post_encoded_batch`` accepts the key: wrappers written against the older
    ``(body, count)`` form keep working, without it."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "idempotency_key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@dataclass
class _Claim:
    rows: List[Row]
    token: str
    pending: List[List[Row]] = field(default_factory=list)


class Flusher:
    """One flush: claim, send, settle, until nothing is left, a batch fails or ``stop`` is set.

    It works on the queue's ``Store`` under the queue's ``FlushPolicy`` and records what
    the link did in its ``LinkState``; ``CloudSyncQueue.maybe_flush`` is the one caller.
    """

    def __init__(
        self,
        store: Store,
        policy: FlushPolicy,
        link: LinkState,
        uploader: Any,
        stop: Optional[threading.Event] = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._link = link
        self._post = poster(uploader)
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise TypeError(f"stop must be a threading.Event (or None), got {type(stop).__name__}: {stop!r:.100}")
        self._stop = stop
        # Items rejected during this call wait for the next one, even with a zero backoff;
        # so do items that cannot be opened (``_readable``).
        self._rejected: Set[int] = set()
        self._unreadable: List[DecryptionError] = []
        self._dead_count = 0
        self._dead_error = ""

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Send batches until none is left, one fails, or ``stop`` is set; return items acked."""
        acked = 0
        queue_id = ""
        while self._stop is None or not self._stop.is_set():
            claim = self._claim()
            if claim is None:
                break
            if not queue_id:
                queue_id = str(self._store.counter("queue_id", ""))
            done, count = self._deliver(claim, queue_id)
            acked += count
            if not done:
                break
        if self._dead_count:
            # One line per call, not per item: a broken schema can dead-letter thousands.
            logger.warning(
                "moved %d items to the dead-letter table; last error: %s", self._dead_count, self._dead_error
            )
        if self._unreadable:
            logger.error("%d items cannot be opened and stay stored, unsent; acked %d", len(self._unreadable), acked)
            raise self._unreadable[0]
        return acked

    def _deliver(self, claim: _Claim, queue_id: str) -> Tuple[bool, int]:
        """Send a claimed batch, splitting it where the endpoint asks; return (go on, acked)."""
        acked = 0
        readable = self._readable(claim)
        claim.pending = [readable] if readable else []
        while claim.pending:
            part = claim.pending.pop()
            ids = [row[0] for row in part]
            outcome = send(self._post, [row[1] for row in part], idempotency_key(queue_id, ids))
            if outcome.kind in (TOO_LARGE, REJECTED) and len(part) > 1:
                middle = len(part) // 2
                claim.pending += [part[middle:], part[:middle]]  # first half goes first
                self._extend_lease(claim)
                continue
            if outcome.kind == TOO_LARGE:
                self._settle(claim, self._dead_letter, ids, outcome.status, outcome.error)
                continue
            if outcome.kind == REJECTED:
                self._settle(claim, self._reject, part, outcome.status, outcome.error)
                continue
            if outcome.kind == CREDENTIALS:
                self._settle(claim, self._keep_for_credentials, claim, part, outcome)
                return False, acked
            if outcome.kind == TRANSIENT:
                self._settle(claim, self._back_off, claim, part, outcome)
                return False, acked
            count = self._settle(claim, self._accept, claim, part, outcome)
            acked += count
            if outcome.retry:
                return False, acked
        return True, acked

    def _readable(self, claim: _Claim) -> List[Row]:
        """The claimed rows with their stored texts as they are sent: opened when sealed.
        An item that cannot be opened (missing or wrong key, changed text) is given back as
        it was claimed and left alone for the rest of the call: never sent, never
        dead-lettered; ``run`` raises its error at the end."""
        store = self._store
        rows, errors = _seal.split_readable(store.sealer, claim.rows, store.queue_id, 3, "sync_queue")
        if errors:
            failed = {error.item_id for error in errors}
            with store.write() as conn:
                conn.executemany(RESTORE_RETRY_SQL, [(row[4], row[0]) for row in claim.rows if row[0] in failed])
                if not rows:
                    conn.execute(DELETE_LEASE_SQL, (claim.token,))
            self._rejected.update(row[0] for row in claim.rows if row[0] in failed)
            self._unreadable += errors
        return rows

    # -- claiming ---------------------------------------------------------------------

    def _claim(self) -> Optional[_Claim]:
        """Pick the next batch and lease it in one transaction (push ``next_retry_at`` ahead),
        so that a concurrent flusher, thread or process, does not send the same items."""
        store = self._store
        with store.lock:
            conn = store.conn()
            now = store.now()
            with write_transaction(conn):
                rows = self._pick(conn, now)
                claim = None
                if rows:
                    ids = [row[0] for row in rows]
                    claim = _Claim(rows, uuid.uuid4().hex)
                    until = now + self._policy.lease_seconds
                    store.run_chunks(RELEASE_SQL, (until,), _codec.id_chunks(ids))
                    conn.execute(DELETE_EXPIRED_LEASES_SQL, (now,))
                    conn.execute(INSERT_LEASE_SQL, (claim.token, len(rows), until))
        return claim

    def _pick(self, conn: sqlite3.Connection, now: float) -> List[Row]:
        """The next batch: the group of a batch being retried, or fresh items, whichever
        comes first in priority order."""
        limit = self._policy.max_batch_items
        budget = self._policy.budget_left(self._store.sent_today)
        levels = (1,) if budget == 0 else (1, 2, 3, 4)
        first = next((rows[0] for level in levels for rows in [self._select(conn, now, level, 1)] if rows), None)
        if first is None:
            return []
        rows: List[Row] = []
        if first[4] > 0:
            for level in levels:
                rows += conn.execute(SELECT_GROUP_SQL, (level, first[4], now, limit)).fetchall()
            rows = [row for row in rows if row[0] not in self._rejected]
        else:
            for level in levels:
                room = limit - len(rows)
                found = self._select(conn, now, level, room) if room > 0 else []
                fresh = [row for row in found if row[4] <= 0]
                rows += fresh
                if len(fresh) < len(found) or len(rows) >= limit:
                    break  # a retried group comes next in priority order: it goes alone
        if budget is not None:
            critical = [row for row in rows if row[3] == 1]
            rows = critical + [row for row in rows if row[3] != 1][: max(0, budget - len(critical))]
        return self._bounded(rows[:limit])

    def _select(self, conn: sqlite3.Connection, now: float, level: int, limit: int) -> List[Row]:
        rows = conn.execute(SELECT_CLAIM_SQL, (level, now, now, limit + len(self._rejected))).fetchall()
        if self._rejected:
            rows = [row for row in rows if row[0] not in self._rejected]
        return rows[:limit]

    def _bounded(self, rows: List[Row]) -> List[Row]:
        size = 0
        for count, row in enumerate(rows):
            size += len(row[1])
            if size > self._policy.max_batch_bytes and count:
                return rows[:count]
        return rows

    def _extend_lease(self, claim: _Claim) -> None:
        """A split sends more requests than planned: keep the rest hidden for a full lease."""
        store = self._store
        ids = [row[0] for part in claim.pending for row in part]
        with store.lock:
            until = store.now() + self._policy.lease_seconds
            with store.write() as conn:
                store.run_chunks(RELEASE_SQL, (until,), _codec.id_chunks(ids))
                conn.execute(EXTEND_LEASE_SQL, (until, claim.token))

    # -- settling ---------------------------------------------------------------------

    def _settle(self, claim: _Claim, apply: Callable[..., int], *args: Any) -> int:
        """Apply one outcome in one transaction; the last one also ends the lease."""
        with self._store.write() as conn:
            result = apply(conn, *args)
            if not claim.pending:
                conn.execute(DELETE_LEASE_SQL, (claim.token,))
        return result

    def _accept(self, conn: sqlite3.Connection, claim: _Claim, part: List[Row], outcome: Outcome) -> int:
        """Ack what the endpoint took; reject and retry the indices it named."""
        store = self._store
        refused = set(outcome.rejected) | set(outcome.retry)
        ids = [row[0] for index, row in enumerate(part) if index not in refused]
        chunks = _codec.id_chunks(ids)
        acked = store.run_chunks(ACK_SQL, (), chunks)
        store.run_chunks(FORGET_REJECTIONS_SQL, (), chunks)
        if acked:
            self._count_sent(conn, acked)
        self._link.accepted()
        if outcome.rejected:
            status = outcome.status
            error = outcome.error or f"the endpoint rejected {len(outcome.rejected)} of {len(part)} items"
            self._reject(conn, [part[i] for i in outcome.rejected], status, error)
        if outcome.retry:
            error = outcome.error or f"the uploader asked to retry {len(outcome.retry)} of {len(part)} items"
            retry_outcome = Outcome(TRANSIENT, status=outcome.status, error=error, retry_after=outcome.retry_after)
            self._back_off(conn, claim, [part[i] for i in outcome.retry], retry_outcome)
        return acked

    def _reject(self, conn: sqlite3.Connection, rows: List[Row], status: Optional[int], error: Optional[str]) -> int:
        """Count a rejection on each item; move those rejected ``max_attempts`` times to the
        dead-letter table and hold the others back like a failed attempt."""
        store = self._store
        error = _short(error or "rejected by the endpoint")
        ids = [row[0] for row in rows]
        conn.executemany(COUNT_REJECTION_SQL, [(row_id, status, error) for row_id in ids])
        exhausted: List[int] = []
        for chunk in _codec.id_chunks(ids):
            limit = (self._policy.max_attempts,)
            exhausted += [r[0] for r in conn.execute(SELECT_EXHAUSTED_SQL[len(chunk)], limit + chunk)]
        if exhausted:
            self._dead_letter(conn, exhausted, status, error)
        dead = set(exhausted)
        held = [row for row in rows if row[0] not in dead]
        self._rejected.update(row[0] for row in held)
        if held:
            delay = self._policy.backoff_delay(max(row[2] for row in held))
            store.run_chunks(NACK_SQL, (store.now() + delay,), _codec.id_chunks([row[0] for row in held]))
            logger.debug("the endpoint rejected %d items (%s); retrying them later", len(held), error)
        return 0

    def _dead_letter(
        self, conn: sqlite3.Connection, ids: List[int], status: Optional[int], error: Optional[str]
    ) -> int:
        """Move items to ``sync_dead_letters`` with the last status and error."""
        store = self._store
        error = _short(error or "rejected by the endpoint")
        chunks = _codec.id_chunks(ids)
        store.run_chunks(MOVE_TO_DEAD_SQL, (status, error, store.now()), chunks)
        moved = store.run_chunks(ACK_SQL, (), chunks)
        store.run_chunks(FORGET_REJECTIONS_SQL, (), chunks)
        if moved:
            conn.execute(ADD_COUNTER_SQL, ("dead_lettered_total", moved))
            self._dead_count += moved
            self._dead_error = error
        return 0

    def _back_off(self, conn: sqlite3.Connection, claim: _Claim, part: List[Row], outcome: Outcome) -> int:
        """Nack the failed part with backoff, hold back the rest of the claim just as long,
        and remember the part so that its retry sends the same items under the same key."""
        delay = self._policy.backoff_delay(max(row[2] for row in part))
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
        until = self._store.now() + delay
        ids = [row[0] for row in part]
        self._store.run_chunks(NACK_SQL, (until,), _codec.id_chunks(ids))
        self._hold_rest(claim, until)
        self._record_failure(conn, TRANSIENT, _short(outcome.error or "upload failed"), delay, len(part))
        return 0

    def _keep_for_credentials(self, conn: sqlite3.Connection, claim: _Claim, part: List[Row], outcome: Outcome) -> int:
        """Keep every item and wait long: a bad key is fixed by a person, not by retrying."""
        delay = self._policy.credentials_delay()
        until = self._store.now() + delay
        self._store.run_chunks(NACK_SQL, (until,), _codec.id_chunks([row[0] for row in part]))
        self._hold_rest(claim, until)
        self._record_failure(conn, CREDENTIALS, _short(outcome.error or "credentials refused"), delay, len(part))
        return 0

    def _hold_rest(self, claim: _Claim, until: float) -> None:
        """Hold back the parts not sent yet just as long, as a group of their own."""
        rest = [row[0] for part in claim.pending for row in part]
        claim.pending = []
        if rest:
            self._store.run_chunks(RELEASE_SQL, (math.nextafter(until, math.inf),), _codec.id_chunks(rest))

    def _count_sent(self, conn: sqlite3.Connection, count: int) -> None:
        conn.execute(ADD_COUNTER_SQL, ("messages_sent_today", count))
        conn.execute(ADD_COUNTER_SQL, ("messages_sent_total", count))
        conn.execute(SET_COUNTER_SQL, ("last_success_at", self._store.now()))

    def _record_failure(
        self, conn: sqlite3.Connection, kind: OutcomeKind, error: str, delay: float, count: int
    ) -> None:
        now = self._store.now()
        conn.execute(ADD_COUNTER_SQL, ("failed_batches", 1))
        conn.execute(SET_COUNTER_SQL, ("last_error", error))
        conn.execute(SET_COUNTER_SQL, ("last_error_at", now))
        self._link.failed(kind, f"{error}; keeping {count} items, next try in {delay:.1f} s", now + delay)


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
