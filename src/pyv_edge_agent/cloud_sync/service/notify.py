"""systemd's notify protocol, written here: one datagram of ``KEY=value`` lines to the Unix
socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Without the
variable every call does nothing, so the service runs the same outside systemd."""

import os
import socket
from typing import Optional


class Notifier:
    """Tells the service manager the service's state (``READY=1``, ``STOPPING=1``,
    ``WATCHDOG=1``, ``STATUS=...``); a failed send is ignored, as systemd's own client does."""

    def __init__(self, address: Optional[str] = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: Optional[str] = None
        if address and (address.startswith("/") or address.startswith("@")):
            self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_seconds: Optional[float] = int(usec) / 1e6 if watched else None

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; True if sent."""
        if self._address is None:
            return False
        message = "\n".join(field.replace("\n", " ") for field in fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError:
            return False
        return True
