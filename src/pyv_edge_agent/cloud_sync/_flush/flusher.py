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
``Idempotency-Key`` (see ``batchkeys``) and a server can drop the duplicate a lost
response causes: the items of a batch get one shared ``next_retry_at`` (the lease, then the
backoff), unique to that batch, and a claim never mixes such a group with other items.
Items never tried (``next_retry_at`` 0) are batched freely.
"""

import contextlib
import logging
import math
import sqlite3
import threading
import time
import uuid
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .. import _codec
from .._errors import DecryptionError
from .._redact import clean
from .._store import batchkeys, seal
from .._store.deliveries import SINGLE, Deliveries
from .._store.sql import (
    ADD_COUNTER_SQL,
    DELETE_EXPIRED_LEASES_SQL,
    DELETE_LEASE_SQL,
    EXTEND_LEASE_SQL,
    INSERT_LEASE_SQL,
    SEALED_FROM_ALL,
    SET_COUNTER_SQL,
    UNSEALED_REFUSED_KEY,
    write_transaction,
)
from .._store.store import Store
from .._types import CRITICAL, Column
from .._upload_types import OutcomeKind, Uploader
from .claim import Claim, Scanned, advance_cursors, pick
from .inflight import InFlight
from .outcome import ACCEPTED, CREDENTIALS, REJECTED, TOO_LARGE, TRANSIENT, Outcome, send
from .outgoing import Post, Row, poster
from .policy import FlushPolicy, LinkState, release_held

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# A server asking for more than a day is more likely misconfigured than serious.
MAX_RETRY_AFTER = 86400.0
# Error text stored with items and counters stays short.
MAX_ERROR_CHARS = 500

# Who refused the credentials, in the log line, unless the uploader says (``credentials_subject``).
CREDENTIALS_SUBJECT = "the ingest endpoint refused the credentials (key, token or certificate)"

# The measured throughput, kept in sync_meta so that a restarted agent sizes its first
# batches from it and ``cloud-sync stats`` shows it.
THROUGHPUT_KEYS = ("link_bytes_per_second", "link_items_per_second")


def check_uploader(uploader: Uploader, lease: float) -> Post:
    """Refuse an uploader that a flush could not use (no ``post_batch``, a coroutine method,
    a timeout not below the lease); return how a flush hands it a batch (``poster``)."""
    post = poster(uploader)
    check_deadline(lease, uploader)
    return post


def check_deadline(lease: float, uploader: Uploader) -> None:
    """Refuse an uploader whose requests may outlast the lease: another flusher would take
    the batch back and send it again while the first request is still running."""
    timeout = getattr(uploader, "timeout", None)
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and not timeout < lease:
        raise ValueError(
            f"the uploader's timeout ({timeout!r} s) must be below the queue's lease_seconds ({lease!r} s): "
            "a request still running when its lease ends would be sent again by another flusher"
        )


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
        uploader: Uploader,
        stop: Optional[threading.Event] = None,
        *,
        deliveries: Deliveries = SINGLE,
    ) -> None:
        self._store = store
        self._policy = policy
        self._link = link
        self._deliveries = deliveries
        # Counters and batch keys of a named destination are its own.
        self._scope = deliveries.scope
        self._post = check_uploader(uploader, policy.lease_seconds)
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise TypeError(f"stop must be a threading.Event (or None), got {type(stop).__name__}: {stop!r:.100}")
        self._stop = stop
        # Items rejected during this call wait for the next one, even with a zero backoff;
        # so do items that cannot be opened (``_readable``).
        self._rejected: Set[int] = set()
        self._unreadable: List[DecryptionError] = []
        self._dead_count = 0
        self._dead_error = ""
        self._unsealed = 0
        self._credentials_subject = str(getattr(uploader, "credentials_subject", "") or "") or CREDENTIALS_SUBJECT
        self._max_items = policy.max_batch_items
        self._max_bytes = policy.max_batch_bytes
        # With several batches in flight: the batches being uploaded (None: one at a time).
        self._in_flight: Optional[InFlight] = None
        self._link_failed = False

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Send batches until none is left, one fails, or ``stop`` is set; return items acked."""
        self._seed_meter()
        acked = self._run_in_flight() if self._policy.max_in_flight_batches > 1 else self._run_one_at_a_time()
        if self._dead_count:
            # One line per call, not per item: a broken schema can dead-letter thousands.
            logger.warning(
                "moved %d items to the dead-letter table; last error: %s", self._dead_count, self._dead_error
            )
        if self._unsealed:
            logger.error(
                "refused %d items that are not sealed in a queue file that holds sealed items (written without"
                " the key or replaced); moved them to the dead-letter table unsent",
                self._unsealed,
            )
        if self._unreadable:
            logger.error("%d items cannot be opened and stay stored, unsent; acked %d", len(self._unreadable), acked)
            raise self._unreadable[0]
        return acked

    def _run_one_at_a_time(self) -> int:
        """Claim, send and settle one batch after the other; return items acked."""
        acked = 0
        while self._stop is None or not self._stop.is_set():
            claim = self._claim()
            if claim is None:
                break
            done, count = self._deliver(claim)
            acked += count
            if not done:
                break
        return acked

    def _run_in_flight(self) -> int:
        """Upload up to ``max_in_flight_batches`` batches at once, each in a thread of its
        own; claim the next batch (in priority order, under the store's lock) only when a
        thread is free, and stop claiming at the first batch that fails. Every batch in
        flight is still settled on its own answer before this returns; return items acked."""
        in_flight = self._in_flight = InFlight(self._policy.max_in_flight_batches)
        with in_flight:
            while (self._stop is None or not self._stop.is_set()) and in_flight.wait_for_room():
                claim = self._claim()
                if claim is None:
                    break
                # Here, not in the batch's thread: the pacing admits the batches in flight together.
                self._prepare(claim)
                in_flight.start(claim, self._send_parts)
        return in_flight.acked

    def _deliver(self, claim: Claim) -> Tuple[bool, int]:
        """Send a claimed batch, splitting it where the endpoint asks; return (go on, acked)."""
        self._prepare(claim)
        return self._send_parts(claim)

    def _prepare(self, claim: Claim) -> None:
        """Make the claim's rows ready to send (``_readable``) and wait for the pacing."""
        readable = self._readable(claim)
        if readable:
            self._pace(readable)
        claim.pending = [readable] if readable else []

    def _send_parts(self, claim: Claim) -> Tuple[bool, int]:
        """Send the prepared parts of a claim and settle each; return (go on, acked)."""
        acked = 0
        while claim.pending:
            part = claim.pending.pop()
            ids = [row[Column.ID] for row in part]
            started = time.monotonic()
            outcome = send(self._post, part, claim.keys[tuple(ids)], self._store.now(), self._store.queue_id)
            if outcome.kind == ACCEPTED:
                seconds = time.monotonic() - started if self._in_flight is None else self._in_flight.busy_seconds()
                self._link.meter.record(_body_size([row[Column.PAYLOAD] for row in part]), len(part), seconds)
            if outcome.kind in (TOO_LARGE, REJECTED) and len(part) > 1:
                middle = len(part) // 2
                claim.pending += [part[middle:], part[:middle]]  # first half goes first
                self._split(claim, ids)
                continue
            with self._settling(claim) as conn:
                if outcome.kind == TOO_LARGE:
                    self._dead_letter(conn, ids, outcome.status, outcome.error)
                elif outcome.kind == REJECTED:
                    self._reject(conn, part, outcome.status, outcome.error)
                elif outcome.kind == CREDENTIALS:
                    self._keep_for_credentials(conn, claim, part, outcome)
                elif outcome.kind == TRANSIENT:
                    self._back_off(conn, claim, part, outcome)
                else:
                    acked += self._accept(conn, claim, part, outcome)
            if outcome.kind in (CREDENTIALS, TRANSIENT):
                return False, acked
            if outcome.kind == ACCEPTED and (outcome.retry or outcome.credentials):
                return False, acked
        return True, acked

    def _readable(self, claim: Claim) -> List[Row]:
        """The claimed rows with their stored texts as they are sent: opened when sealed.
        An item that cannot be opened (missing or wrong key, changed text) is given back as
        it was claimed and left alone for the rest of the call: never sent, never
        dead-lettered; ``run`` raises its error at the end. A plain item where items must
        be sealed (see ``Store.sealed_from``) is never sent: it goes to the dead-letter table."""
        store = self._store
        unsealed = seal.unsealed_ids(claim.rows, store.sealed_from)
        rows = [row for row in claim.rows if row[Column.ID] not in unsealed] if unsealed else claim.rows
        rows, errors = seal.split_readable(store.sealer, rows, store.queue_id, "sync_queue")
        if errors or unsealed:
            failed = {error.item_id for error in errors}
            with store.write() as conn:
                if unsealed:
                    self._refuse_unsealed(conn, sorted(unsealed))
                key = self._deliveries.key
                restored = [row for row in claim.rows if row[Column.ID] in failed]
                conn.executemany(
                    self._deliveries.restore_retry,
                    [key + (row[Column.NEXT_RETRY_AT], row[Column.ID]) for row in restored],
                )
                if not rows:
                    conn.execute(DELETE_LEASE_SQL, (claim.token,))
                # What goes out is a new batch: its own key, never the whole claim's.
                batchkeys.forget(conn, [row[Column.ID] for row in claim.rows], self._scope)
                readable_ids = [row[Column.ID] for row in rows]
                claim.keys = {tuple(readable_ids): batchkeys.key_for(conn, readable_ids, self._scope)} if rows else {}
            self._rejected.update(row[Column.ID] for row in claim.rows if row[Column.ID] in failed)
            self._unreadable += errors
        return rows

    def _refuse_unsealed(self, conn: sqlite3.Connection, ids: List[int]) -> None:
        """Dead-letter items that should be sealed and are not, and count them."""
        mark = self._store.sealed_from
        start = "every item" if mark == SEALED_FROM_ALL else f"the items from id {mark} on"
        why = (
            f"refused unsent: not sealed, in a queue file where {start} must be sealed"
            " (written without the key, or its stored text was replaced)"
        )
        self._dead_letter(conn, ids, None, why)
        conn.execute(ADD_COUNTER_SQL, (self._scope + UNSEALED_REFUSED_KEY, len(ids)))
        self._unsealed += len(ids)

    # -- sizing and pacing ------------------------------------------------------------

    def _seed_meter(self) -> None:
        """Start from the throughput an earlier process measured, when this one has none
        and sizes batches by it."""
        if self._policy.max_batch_seconds is not None and self._link.meter.bytes_per_second is None:
            found = self._store.counters([self._scope + key for key in THROUGHPUT_KEYS])
            self._link.meter.seed(*(found.get(self._scope + key) for key in THROUGHPUT_KEYS))

    def _size_batch(self) -> None:
        """Bound the next batch: the item and byte limits, no more than a full token bucket,
        and with ``max_batch_seconds`` what the measured link carries in that time."""
        items, size = self._policy.max_batch_items, self._policy.max_batch_bytes
        pacer = self._link.pacer
        if pacer is not None and pacer.active:
            paced_items, paced_bytes = pacer.batch_bounds()
            items = min(items, paced_items if paced_items is not None else items)
            size = min(size, paced_bytes if paced_bytes is not None else size)
        if self._policy.max_batch_seconds is not None:
            # Batches in flight share the link: together they take about max_batch_seconds.
            share = self._policy.max_batch_seconds / self._policy.max_in_flight_batches
            size = min(size, self._link.meter.batch_bytes(share))
        self._max_items, self._max_bytes = max(1, items), max(1, size)

    def _pace(self, rows: List[Row]) -> None:
        """Wait until the token buckets let this batch go (a critical item may skip the wait)."""
        pacer = self._link.pacer
        if pacer is None or not pacer.active:
            return
        waited = pacer.admit(
            len(rows),
            _body_size([row[Column.PAYLOAD] for row in rows]),
            any(row[Column.PRIORITY] == CRITICAL for row in rows),
        )
        if waited > 0.0:
            logger.debug("paced: waited %.3f s before a batch of %d items", waited, len(rows))

    # -- claiming ---------------------------------------------------------------------

    def _claim(self) -> Optional[Claim]:
        """Pick the next batch and lease it in one transaction (push ``next_retry_at`` ahead),
        so that a concurrent flusher, thread or process, does not send the same items."""
        store = self._store
        self._size_batch()
        with store.lock:
            conn = store.conn()
            now = store.now()
            with write_transaction(conn):
                store.read_sealed_from(conn)  # another process may have sealed items since
                budget = self._policy.budget_left(lambda: store.sent_today(self._scope))
                if budget is not None and self._in_flight is not None:
                    budget = max(0, budget - self._in_flight.reserved)  # not counted as sent yet
                bounds = (self._max_items, self._max_bytes)
                scans: Dict[int, Scanned] = {}
                rows = pick(conn, self._deliveries, now, self._policy, budget, bounds, self._rejected, scans)
                advance_cursors(conn, self._deliveries, rows, scans)
                claim = None
                if rows:
                    ids = [row[Column.ID] for row in rows]
                    claim = Claim(rows, uuid.uuid4().hex)
                    # Stored with the lease: a retry in any process finds it.
                    claim.keys[tuple(ids)] = batchkeys.key_for(conn, ids, self._scope)
                    until = now + self._policy.lease_seconds
                    store.run_chunks(self._deliveries.release, self._deliveries.key + (until,), _codec.id_chunks(ids))
                    conn.execute(DELETE_EXPIRED_LEASES_SQL, (now,))
                    conn.execute(INSERT_LEASE_SQL, (claim.token, len(rows), until))
        return claim

    def _split(self, claim: Claim, parent: List[int]) -> None:
        """A split sends more requests than planned: keep the rest hidden for a full lease,
        and give each new part a key of its own (the parent's is not used again)."""
        store = self._store
        ids = [row[Column.ID] for part in claim.pending for row in part]
        with store.lock:
            until = store.now() + self._policy.lease_seconds
            with store.write() as conn:
                store.run_chunks(self._deliveries.release, self._deliveries.key + (until,), _codec.id_chunks(ids))
                conn.execute(EXTEND_LEASE_SQL, (until, claim.token))
                batchkeys.forget(conn, parent, self._scope)
                for part in claim.pending[-2:]:
                    part_ids = [row[Column.ID] for row in part]
                    claim.keys[tuple(part_ids)] = batchkeys.key_for(conn, part_ids, self._scope)

    # -- settling ---------------------------------------------------------------------

    def _remove(self, chunks: List[Tuple[int, ...]]) -> int:
        """Take items off this destination's list (acked, dead-lettered); the items leave the
        file once no destination needs them. Returns how many deliveries ended."""
        return self._store.end_deliveries(self._deliveries, chunks)

    def _nack(self, ids: List[int], until: float) -> None:
        """Count a failed attempt on ``ids`` and hold them back until ``until``."""
        self._store.run_chunks(self._deliveries.nack, self._deliveries.key + (until,), _codec.id_chunks(ids))

    @contextlib.contextmanager
    def _settling(self, claim: Claim) -> Iterator[sqlite3.Connection]:
        """One transaction to settle one outcome in; the last one also ends the lease."""
        with self._store.write() as conn:
            yield conn
            if not claim.pending:
                conn.execute(DELETE_LEASE_SQL, (claim.token,))

    def _accept(self, conn: sqlite3.Connection, claim: Claim, part: List[Row], outcome: Outcome) -> int:
        """Ack what the endpoint took; reject and retry the indices it named."""
        store = self._store
        batchkeys.forget(conn, [row[Column.ID] for row in part], self._scope)
        refused = {*outcome.rejected, *outcome.retry, *outcome.too_large, *outcome.credentials}
        ids = [row[Column.ID] for index, row in enumerate(part) if index not in refused]
        chunks = _codec.id_chunks(ids)
        acked = self._remove(chunks)
        if acked:
            self._count_sent(conn, acked)
        # A refusal of part of a batch is not a recovered link; nor is a batch that was in
        # flight when another failed: the failure's backoff stands.
        if not outcome.credentials and not self._link_failed:
            release_held(conn, self._deliveries, self._link.accepted(store.now()))
        meter = self._link.meter
        for key, value in zip(THROUGHPUT_KEYS, (meter.bytes_per_second, meter.items_per_second)):
            if value is not None:
                conn.execute(SET_COUNTER_SQL, (self._scope + key, value))
        if outcome.rejected:
            status = outcome.status
            error = outcome.error or f"the endpoint rejected {len(outcome.rejected)} of {len(part)} items"
            self._reject(conn, [part[i] for i in outcome.rejected], status, error)
        if outcome.too_large:
            error = outcome.error or f"{len(outcome.too_large)} of {len(part)} items are too large for the endpoint"
            self._dead_letter(conn, [part[i][Column.ID] for i in outcome.too_large], outcome.status, error)
        if outcome.credentials:
            error = outcome.error or f"the endpoint refused the credentials for {len(outcome.credentials)} items"
            kept = Outcome(kind=CREDENTIALS, status=outcome.status, error=error)
            self._keep_for_credentials(conn, claim, [part[i] for i in [*outcome.credentials, *outcome.retry]], kept)
        elif outcome.retry:
            error = outcome.error or f"the uploader asked to retry {len(outcome.retry)} of {len(part)} items"
            retry_outcome = Outcome(kind=TRANSIENT, status=outcome.status, error=error, retry_after=outcome.retry_after)
            self._back_off(conn, claim, [part[i] for i in outcome.retry], retry_outcome)
        return acked

    def _reject(self, conn: sqlite3.Connection, rows: List[Row], status: Optional[int], error: Optional[str]) -> None:
        """Count a rejection on each item; move those rejected ``max_attempts`` times to the
        dead-letter table and hold the others back like a failed attempt."""
        store = self._store
        error = _short(error or "rejected by the endpoint")
        ids = [row[Column.ID] for row in rows]
        # A rejected batch is not retried as it was: a server may have cached its answer.
        batchkeys.forget(conn, ids, self._scope)
        stored = self._stored(error)
        deliveries = self._deliveries
        conn.executemany(deliveries.count_rejection, [deliveries.key + (row_id, status, stored) for row_id in ids])
        self._note_error(conn, stored)
        exhausted: List[int] = []
        for chunk in _codec.id_chunks(ids):
            limit = deliveries.key + (self._policy.max_attempts,)
            exhausted += [r[0] for r in conn.execute(deliveries.exhausted[len(chunk)], limit + chunk)]
        if exhausted:
            self._dead_letter(conn, exhausted, status, error)
        dead = set(exhausted)
        held = [row for row in rows if row[Column.ID] not in dead]
        self._rejected.update(row[Column.ID] for row in held)
        if held:
            delay = self._policy.backoff_delay(max(row[Column.RETRY_COUNT] for row in held))
            self._nack([row[Column.ID] for row in held], store.now() + delay)
            logger.debug(
                "the endpoint rejected %d items (%s); retrying them later", len(held), self._shown(status, error)
            )

    def _dead_letter(
        self, conn: sqlite3.Connection, ids: List[int], status: Optional[int], error: Optional[str]
    ) -> None:
        """Move items to this destination's dead-letter table with the last status and error."""
        store = self._store
        error = _short(error or "rejected by the endpoint")
        batchkeys.forget(conn, ids, self._scope)
        chunks = _codec.id_chunks(ids)
        stored = self._stored(error)
        deliveries = self._deliveries
        store.run_chunks(deliveries.move_to_dead, deliveries.key + (status, stored, store.now()), chunks)
        moved = self._remove(chunks)
        self._note_error(conn, stored)
        if moved:
            conn.execute(ADD_COUNTER_SQL, (self._scope + "dead_lettered_total", moved))
            self._dead_count += moved
            self._dead_error = self._shown(status, error)

    def _back_off(self, conn: sqlite3.Connection, claim: Claim, part: List[Row], outcome: Outcome) -> None:
        """Nack the failed part with backoff, hold back the rest of the claim just as long,
        and remember the part so that its retry sends the same items under the same key."""
        delay = self._policy.backoff_delay(max(row[Column.RETRY_COUNT] for row in part))
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
        until = self._store.now() + delay
        ids = [row[Column.ID] for row in part]
        self._nack(ids, until)
        held = [until, self._hold_rest(claim, until)]
        # No answer at all: the link itself may be down, and a probe may end the wait.
        link_down = outcome.status is None and outcome.retry_after is None
        error = _short(outcome.error or "upload failed")
        self._record_failure(conn, TRANSIENT, outcome.status, error, delay, len(part), held if link_down else ())

    def _keep_for_credentials(self, conn: sqlite3.Connection, claim: Claim, part: List[Row], outcome: Outcome) -> None:
        """Keep every item and wait long: a bad key is fixed by a person, not by retrying."""
        delay = self._policy.credentials_delay()
        until = self._store.now() + delay
        self._nack([row[Column.ID] for row in part], until)
        self._hold_rest(claim, until)
        error = _short(outcome.error or "credentials refused")
        self._record_failure(conn, CREDENTIALS, outcome.status, error, delay, len(part))

    def _hold_rest(self, claim: Claim, until: float) -> float:
        """Hold back the parts not sent yet just as long, as a group of their own (a new
        batch: the keys of its parts are not used again); return the stamp they got."""
        conn = self._store.conn()
        for part in claim.pending:
            batchkeys.forget(conn, [row[Column.ID] for row in part], self._scope)
        rest = [row[Column.ID] for part in claim.pending for row in part]
        claim.pending = []
        stamp = math.nextafter(until, math.inf)
        if rest:
            self._store.run_chunks(self._deliveries.release, self._deliveries.key + (stamp,), _codec.id_chunks(rest))
        return stamp

    def _count_sent(self, conn: sqlite3.Connection, count: int) -> None:
        conn.execute(ADD_COUNTER_SQL, (self._scope + "messages_sent_today", count))
        conn.execute(ADD_COUNTER_SQL, (self._scope + "messages_sent_total", count))
        conn.execute(SET_COUNTER_SQL, (self._scope + "last_success_at", self._store.now()))

    def _record_failure(
        self,
        conn: sqlite3.Connection,
        kind: OutcomeKind,
        status: Optional[int],
        error: str,
        delay: float,
        count: int,
        held: Sequence[float] = (),
    ) -> None:
        now = self._store.now()
        self._link_failed = True
        conn.execute(ADD_COUNTER_SQL, (self._scope + "failed_batches", 1))
        self._note_error(conn, self._stored(error), now)
        detail = f"{self._shown(status, error)}; keeping {count} items, next try in {delay:.1f} s"
        self._link.failed(kind, detail, now + delay, held, self._credentials_subject)

    # -- error texts --------------------------------------------------------------------
    # A server's error text may echo the payloads (a FastAPI-style 422 does): where they
    # are sealed, it is stored sealed and logged as its status and size only.

    def _stored(self, error: str) -> str:
        """``error`` as the file keeps it: sealed when payloads are."""
        sealer = self._store.sealer
        return error if sealer is None else sealer.seal_note(error, self._store.queue_id, "last_error")

    def _shown(self, status: Optional[int], error: str) -> str:
        """``error`` as it is logged: when payloads are sealed, only its status and size."""
        if self._store.sealer is None:
            return error
        answer = "no status" if status is None else f"status {status}"
        return f"{answer}; an error text of {len(error)} characters, kept sealed (payloads are sealed)"

    def _note_error(self, conn: sqlite3.Connection, stored: str, now: Optional[float] = None) -> None:
        """Show ``stored`` (an error text as ``_stored`` gives it: scrubbed, short, sealed
        where payloads are) as the queue's ``last_error``: a refusal of items is as much an
        error as a dead link."""
        conn.execute(SET_COUNTER_SQL, (self._scope + "last_error", stored))
        conn.execute(SET_COUNTER_SQL, (self._scope + "last_error_at", self._store.now() if now is None else now))


def _body_size(texts: List[bytes]) -> int:
    """Bytes of the JSON array body these stored texts make (brackets and commas too)."""
    return sum(map(len, texts)) + len(texts) + 1


def _short(text: str) -> str:
    """Error text as it is stored and logged: without control characters (a custom
    uploader may pass on a server's text as it came), and short."""
    text = clean(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
