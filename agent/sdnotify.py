"""systemd's notification protocol (``Type=notify``, ``WatchdogSec=``), spoken directly: one
datagram per message to the socket named by ``$NOTIFY_SOCKET``. No dependency.

    notifier = Notifier.from_environment()        # None outside systemd
    notifier.ready("signing windows")            # READY=1: systemd considers the unit started
    notifier.watchdog_due(monotonic_ns)          # WATCHDOG=1 every half WatchdogSec, from the loop
    notifier.stopping()

The daemon's loop sends the watchdog ping after a poll completes, so a hung NVML call (or anything
else that stops the loop) stops the pings, and systemd kills and restarts the agent after
``WatchdogSec``; the restart is an AGENT_START gap in the evidence, not silence.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Messages to systemd's notification socket."""

    def __init__(self, address: str, *, watchdog_interval_ns: int | None) -> None:
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_ns = watchdog_interval_ns
        """Half of ``WatchdogSec`` (systemd's advice), or None without a watchdog."""
        self._next_ping_ns = 0

    @classmethod
    def from_environment(cls) -> Notifier | None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith(("/", "@"))):
            return None
        interval: int | None = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) * 1000 // 2
        return cls(address, watchdog_interval_ns=interval)

    def send(self, *lines: str) -> bool:
        """Send one message; never raises (systemd not listening must not stop the agent)."""
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("systemd notification failed error=%r", exc.strerror or str(exc))
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: signing the partial window")

    def watchdog_due(self, monotonic_ns: int) -> None:
        """Ping the watchdog if half its interval has passed since the last ping."""
        if self.watchdog_interval_ns is None or monotonic_ns < self._next_ping_ns:
            return
        self._next_ping_ns = monotonic_ns + self.watchdog_interval_ns
        self.send("WATCHDOG=1")
