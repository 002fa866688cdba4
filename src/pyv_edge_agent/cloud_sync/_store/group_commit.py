"""Group commit: concurrent writers share one transaction, and one fsync, per group.

Leader/follower: a caller that finds no commit under way leads and commits at once, so a
lone caller pays nothing extra. Callers arriving while a leader commits queue up and wait;
the leader then promotes the first of them, which commits everything queued so far in one
call of ``write`` and wakes the others with their ids. When a shared ``write`` fails, each
item is written alone, so that every caller gets the outcome of its own item.
"""

import os
import threading
import time
import weakref
from typing import Callable, Generic, List, Optional, TypeVar

Item = TypeVar("Item")

# Committers whose locks a forked child must replace (see ``GroupCommitter.after_fork``).
_ALL_COMMITTERS: "weakref.WeakSet[GroupCommitter[object]]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for committer in list(_ALL_COMMITTERS):
        committer.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Pending(Generic[Item]):
    """One ``submit`` call taking part in a group commit."""

    __slots__ = ("item", "row_id", "error", "lead", "wake")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.row_id = 0
        self.error: Optional[BaseException] = None
        self.lead = False
        # Held until the leader has an outcome for this call, or promotes it to leader.
        self.wake: Optional[threading.Lock] = None


class GroupCommitter(Generic[Item]):
    """Hands items from many threads to ``write`` in groups; ``submit`` returns each one's id.

    :param write: stores the items in one transaction and returns their ids in order
        (positive integers); it raises to fail the whole group.
    """

    def __init__(self, write: Callable[[List[Item]], List[int]]) -> None:
        self._write = write
        self._reset()
        _ALL_COMMITTERS.add(self)  # type: ignore[arg-type]

    def _reset(self) -> None:
        # Lock order: ``_mutex`` is only ever held for a few list operations and never while
        # ``write`` runs; a follower waits holding neither.
        self._mutex = threading.Lock()
        self._pending: List[_Pending[Item]] = []
        self._busy = False
        self._last = 1  # size of the latest group

    def after_fork(self) -> None:
        """In a forked child: the mutex may have been held, and a group led, by threads
        that do not exist there."""
        self._reset()

    def submit(self, item: Item) -> int:
        """Write ``item``, with whatever other threads submit meanwhile; return its id once
        committed, or raise the error of its own write."""
        entry = _Pending(item)
        with self._mutex:
            if self._busy:
                entry.wake = threading.Lock()
                entry.wake.acquire()
                self._pending.append(entry)
            else:
                self._busy = True
        if entry.wake is not None:
            try:
                entry.wake.acquire()
            except BaseException:
                self._abandon(entry)
                raise
            if not entry.lead:
                if entry.error is not None:
                    raise entry.error
                return entry.row_id
            with self._mutex:
                group, self._pending = self._pending, []
        elif self._last > 1:
            # Other threads were writing a moment ago and are about to come back with their
            # next items: let them queue behind this one rather than commit alone.
            time.sleep(0)
            with self._mutex:
                group, self._pending = [entry] + self._pending, []
        else:
            group = [entry]
        self._last = len(group)
        try:
            self._commit(group, entry)
        finally:
            with self._mutex:
                self._hand_off()
            # Only now wake this group's callers: the next leader's commit (its fsync runs
            # with the GIL released) overlaps with their taking the GIL in turn to return.
            for other in group:
                if other is not entry and (other.row_id or other.error is not None):
                    other.wake.release()  # type: ignore[union-attr]
        if entry.error is not None:
            raise entry.error
        return entry.row_id

    def _hand_off(self) -> None:
        """Promote the first waiting caller to leader, or mark no commit under way; call
        with ``_mutex`` held."""
        if self._pending:
            successor = self._pending[0]
            successor.lead = True
            successor.wake.release()  # type: ignore[union-attr]
        else:
            self._busy = False

    def _abandon(self, entry: _Pending[Item]) -> None:
        """Withdraw a waiting caller interrupted by an exception (KeyboardInterrupt) so that
        the group commit never waits for a thread that has gone."""
        with self._mutex:
            if entry.lead:
                self._hand_off()
            elif entry in self._pending:
                self._pending.remove(entry)

    def _commit(self, group: List[_Pending[Item]], leader: _Pending[Item]) -> None:
        """Write every entry of ``group`` in one call and record each one's outcome."""
        try:
            try:
                ids = self._write([entry.item for entry in group])
                for entry, row_id in zip(group, ids):
                    entry.row_id = row_id
            except Exception as exc:
                if len(group) == 1:
                    leader.error = exc
                for entry in group if len(group) > 1 else ():
                    try:
                        entry.row_id = self._write([entry.item])[0]
                    except Exception as single_exc:
                        entry.error = single_exc
        except BaseException:
            # The leader's thread is being interrupted: callers without an outcome go back
            # to the front of the queue for the next leader.
            with self._mutex:
                self._pending[:0] = [e for e in group if e is not leader and e.row_id == 0 and e.error is None]
            raise
