"""Read deadlines for slow clients (slow-loris, slow body), in the spirit of Apache's mod_reqtimeout.

waitress only closes a connection that sends *nothing* for ``channel_timeout`` (120 s). A client
that trickles one byte every few seconds keeps its connection forever, and ``--connection-limit``
such clients hold every connection the server will accept: nobody else gets in. Here each request
must arrive completely within ``base_s`` plus one second per ``min_rate`` bytes received, so a
legitimate large upload on a slow link gets the time it needs, while a trickle runs out quickly.
A late request gets a 408 JSON error (waitress's error task, made JSON by
``service.__main__.json_server_errors``) and its connection is closed.

The deadline is checked whenever bytes arrive and once a second by the server's maintenance pass.
A client that goes silent in the middle of a request gets the same 408 after ``base_s`` without a
byte (or at its deadline, if that comes first); a connection idle between requests is closed
after ``base_s`` (waitress's ``channel_timeout``). This hooks waitress's ``HTTPChannel.received``
and ``maintenance`` (waitress is pinned in requirements.txt; tests/test_slow_clients.py covers it).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.utilities import Error

log = logging.getLogger(__name__)


class RequestTimeout(Error):
    code = 408
    reason = "Request Timeout"


class DeadlineChannel(HTTPChannel):
    """An HTTP channel whose partly received request must be complete by a size-dependent deadline."""

    base_s: float = 30.0
    min_rate: float = 64 * 1024  # bytes/s

    _timed: Any = None  # the waitress request parser being timed
    _started = 0.0
    _nbytes = 0

    def received(self, data: bytes) -> bool:
        if self.request is None:  # the first bytes of a new request
            self._timed, self._started, self._nbytes = None, time.monotonic(), 0
        self._nbytes += len(data)
        ok = super().received(data)
        self.check_deadline(time.monotonic())
        return ok

    def check_deadline(self, now: float, silent_since: float | None = None) -> None:
        """408 a partly received request that is past its deadline, or (``silent_since``, a
        ``time.time()`` value) from which nothing has arrived since then."""
        with self.requests_lock:
            req = self.request
            if req is None or req.completed or self.will_close or self.close_when_flushed:
                return
            if self.requests:
                # A pipelined request waits while an earlier one is answered, and the channel reads
                # nothing meanwhile: its clock starts when the server is free again.
                self._started = now
                return
            if req is not self._timed:  # a pipelined request began inside the last read
                if self._timed is not None:
                    self._started, self._nbytes = now, 0
                self._timed = req
            allowed = self.base_s + self._nbytes / self.min_rate
            if now - self._started > allowed:
                why = (
                    f"the request did not arrive within {allowed:.0f} s ({self.base_s:g} s plus 1 s per "
                    f"{self.min_rate / 1024:g} KiB received)"
                )
            elif silent_since is not None and self.last_activity < silent_since:
                why = f"nothing of the request arrived for {self.base_s:g} s"
            else:
                return
            log.info(
                "closing %s: %d bytes of a request in %.1f s: %s",
                self.addr[0] if self.addr else "?",
                self._nbytes,
                now - self._started,
                why,
            )
            # Hand the partial request to waitress's error path: it writes the 408 and closes.
            req.error = RequestTimeout(why)
            req.completed = True
            self.request = None
            self.requests.append(req)
            if len(self.requests) == 1:
                self.server.add_task(self)


def listeners(server: Any) -> list[Any]:
    """The listening servers behind ``waitress.create_server``'s result: itself, or, when the host
    resolves to several addresses (``localhost`` as 127.0.0.1 and ::1), each socket's server."""
    if isinstance(server, BaseWSGIServer):
        return [server]
    return [s for s in server.map.values() if isinstance(s, BaseWSGIServer)]


def install(server: Any, base_s: float, min_rate_kib_s: float) -> None:
    """Give ``server`` (from ``waitress.create_server``) read deadlines for new connections.

    ``base_s`` <= 0 turns them off (waitress's idle timeout alone; the naive baseline).
    """
    if base_s <= 0:
        return
    channel = type("FacememChannel", (DeadlineChannel,), {"base_s": base_s, "min_rate": min_rate_kib_s * 1024})
    # One Adjustments object is shared by every listener. A connection that sends nothing at all
    # holds a slot too: close idle ones after base_s as well (only between requests; waitress
    # never closes a channel whose request is being answered).
    server.adj.cleanup_interval = 1  # the maintenance pass below runs once a second
    server.adj.channel_timeout = min(server.adj.channel_timeout, base_s)
    for srv in listeners(server):
        srv.channel_class = channel
        srv.maintenance = _with_deadlines(srv, srv.maintenance)


def _with_deadlines(srv: Any, idle_close: Any) -> Any:
    def maintenance(now: float) -> None:
        # Deadlines first: a request cut off mid-way gets its 408 (waitress's idle close would
        # drop it without an answer, and skips it once the 408 is queued).
        mono, silent_since = time.monotonic(), now - srv.adj.channel_timeout
        for ch in list(srv.active_channels.values()):
            if isinstance(ch, DeadlineChannel):
                ch.check_deadline(mono, silent_since)
        idle_close(now)

    return maintenance
