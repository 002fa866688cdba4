"""Terminal output for the ``cloud-sync`` command: aligned tables, human units and a
progress bar.

rich draws them when it is installed (``pip install pyv-edge-agent[cli]``); without it the
output is plain aligned text. Colour and the progress bar appear only on a terminal.
"""

import sys
import time
from contextlib import contextmanager
from typing import IO, Any, Callable, Dict, Iterator, Optional, Sequence

try:
    import rich.console
    import rich.progress
    import rich.table
except ImportError:  # the cli extra is optional
    rich = None  # type: ignore[assignment]

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(size: Optional[float]) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"-"``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: Optional[float]) -> str:
    """``3725`` -> ``"1h 2m"``; None -> ``"-"``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def human_age(timestamp: Optional[float], now: Optional[float] = None) -> str:
    """How long ago a wall-clock timestamp was: ``"5m 3s ago"``."""
    if timestamp is None:
        return "-"
    return human_duration((time.time() if now is None else now) - timestamp) + " ago"


class Output:
    """Where the command writes; picks rich or plain text once."""

    def __init__(self, stream: Optional[IO[str]] = None, plain: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.is_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._console = None
        if rich is not None and not plain:
            self._console = rich.console.Console(file=self.stream, highlight=False, soft_wrap=True)

    def line(self, text: str = "", style: Optional[str] = None) -> None:
        """Write one line (styled only on a terminal with rich)."""
        if self._console is not None:
            self._console.print(text, style=style, markup=False)
        else:
            self.stream.write(text + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None) -> None:
        """Write an aligned table; numeric-looking columns are right-aligned."""
        cells = [[str(cell) for cell in row] for row in rows]
        numeric = [all(_looks_numeric(row[i]) for row in cells) and bool(cells) for i in range(len(columns))]
        if self._console is not None:
            table = rich.table.Table(title=title, title_justify="left")
            for name, right in zip(columns, numeric):
                table.add_column(name, justify="right" if right else "left")
            for row in cells:
                table.add_row(*row)
            self._console.print(table)
            return
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

        def fmt(row: Sequence[str]) -> str:
            parts = [cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(row, widths, numeric)]
            return "  ".join(parts).rstrip()

        if title:
            self.stream.write(title + "\n")
        self.stream.write(fmt(columns) + "\n")
        self.stream.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            self.stream.write(fmt(row) + "\n")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar on a terminal with rich; elsewhere the updates are dropped."""
        if self._console is None or not self.is_terminal:
            yield lambda completed: None
            return
        with rich.progress.Progress(console=self._console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda completed: bar.update(task, completed=completed)


def _looks_numeric(text: str) -> bool:
    head = text.split(" ")[0].replace(",", "").replace(".", "", 1).lstrip("-")
    return head.isdigit()


class TrackingUploader:
    """Wraps an uploader to report progress (items accepted so far) and whether the last
    batch failed; it keeps the no-parse ``post_encoded_batch`` path when the inner one has it."""

    def __init__(self, inner: Any, on_progress: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_progress = on_progress
        self.sent = 0
        self.failed = False

    def _track(self, count: int, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except Exception:
            self.failed = True
            raise
        self.failed = result is False
        if not self.failed:
            self.sent += count
            self._on_progress(self.sent)
        return result

    def post_batch(self, payloads: Sequence[Dict[str, Any]]) -> Any:
        """Forward to the inner uploader and count the batch if it was accepted."""
        return self._track(len(payloads), lambda: self._inner.post_batch(payloads))

    def post_encoded_batch(self, body: bytes, count: int, idempotency_key: Optional[str] = None) -> Any:
        """Forward a ready body (and its idempotency key) to the inner uploader and count it
        if it was accepted."""
        return self._track(count, lambda: self._inner.post_encoded_batch(body, count, idempotency_key=idempotency_key))
