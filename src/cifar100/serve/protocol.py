"""uvicorn's httptools protocol with the limits it lacks: a request head has a size and a time
limit, a body a time limit, and a shutdown does not wait for a body that is still coming.

uvicorn buffers a request head without bound when it runs on httptools (its h11 protocol has a
size limit, but parses in Python at a third of the speed): two clients sending header lines
that never end took a server to 3.9 GB. Here every connection is in one of three phases:

    waiting  no request begun (a new connection, or between keep-alive requests)
    head     request line and headers arriving: at most `max_head_bytes` (431), and the whole
             head within `head_timeout_s` of the connection or of the request's first byte (408)
    body     at most `body_timeout_s` from the end of the head to the end of the body (408)

A refusal is written straight to the socket as the service's {"error": one line} JSON, with
`Connection: close`, and the connection is closed: the application sees a disconnect. The
bytes of a head are counted as they arrive, before they are parsed, so that a connection holds
at most the limit plus one read (256 KB) of a head, whatever the client sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cifar100.serve.settings import ConnectionLimits

TIMED_OUT = "cifar100.timed_out"  # set in a request's scope when its body ran out of time


def guarded_protocol(
    limits: ConnectionLimits, refused: Callable[[str], None] | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), enforcing `limits`; `refused(kind)` is
    told of each refusal (for the metrics)."""
    attributes = {"limits": limits, "refused": staticmethod(refused) if refused else None}
    return type("GuardedProtocol", (GuardedProtocol,), attributes)


class GuardedProtocol(HttpToolsProtocol):
    limits: ConnectionLimits = ConnectionLimits()
    refused: Callable[[str], None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = "waiting"
        self._head_bytes = 0
        self._finished_in_chunk = False
        # A connection that never sends a whole head is closed after the head's time limit.
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self.limits.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._finished_in_chunk = False
        super().data_received(data)
        if self._phase != "head" or self.transport.is_closing():
            return
        # Still in a head after this read: all of it was head, unless a request ended in it
        # (pipelining), when the next head's share is unknown and counted from the next read.
        if not self._finished_in_chunk:
            self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_head_bytes:
            self._refuse(
                431,
                f"request head (request line and headers) of more than {self._head_bytes} "
                f"bytes, over this server's limit of {self.limits.max_head_bytes} "
                "(--max-head-kb)",
                "head_too_large",
            )

    # httptools' callbacks, in the order it makes them for each request
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._head_bytes = "head", 0
        if self._timer is None:  # the first request goes on with the connection's own timer
            self._arm(self.limits.head_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = "body"
        self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase, self._finished_in_chunk = "waiting", True
        self._disarm()  # uvicorn's keep-alive timeout covers the wait for the next request

    def shutdown(self) -> None:
        # uvicorn lets a request whose body is still arriving run on, up to its graceful
        # shutdown timeout (then cancels it, with a traceback): answer it now instead.
        if self._phase == "body" and self.cycle is not None and not self.cycle.response_started:
            self._refuse(503, "the server is shutting down; retry", "shutting_down")
        else:
            super().shutdown()

    # timers and refusals
    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._phase == "head":
            self._refuse(
                408,
                f"request head not received within {self.limits.head_timeout_s:g} s "
                "(--head-timeout)",
                "head_timeout",
            )
        elif self._phase == "waiting" and self.cycle is None:
            self.transport.close()  # connected, and never said a word

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._phase != "body":
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # answered already; stop reading what still trickles in
            return
        self.scope[TIMED_OUT] = True  # type: ignore[literal-required]
        self._refuse(
            408,
            f"request body not received within {self.limits.body_timeout_s:g} s "
            "(--body-timeout); send it faster, or smaller",
            "body_timeout",
        )

    def _refuse(self, status: int, message: str, kind: str) -> None:
        """Answer `status` with {"error": message} and close the connection."""
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._phase = "closed"
        if self.refused is not None:
            self.refused(kind)
