"""Requests asking for a protocol upgrade, answered as the HTTP/1.1 requests they also are.

A client may ask to switch a connection to HTTP/2 (``Upgrade: h2c``: ``curl --http2`` does, and
Java's ``HttpClient`` by default) or to a WebSocket. No CloudTask service switches, and RFC 9110
(7.8) lets a server ignore the header and answer the request as it stands. httptools, the parser
uvicorn uses, instead takes everything after such a request's head for the other protocol: it
ends the request there, without its body (a ``POST /jobs`` reached the app as if it had none and
was answered 400 "body: Field required"), and reads nothing more of the connection.

:class:`UpgradeIgnoringParser` reads on: where httptools stops for an upgrade, a new parser takes
the connection, given the request's head again (without the upgrade) followed by the bytes that
were not read. The head's callbacks are not passed on, since the request is already the
protocol's; its body and end are, and every request after it as usual. Nothing of this runs for a
request that asks for no upgrade.
"""

from array import array
from typing import Any

import httptools

_FRAMING = (b"content-length", b"transfer-encoding")


class UpgradeIgnoringParser(httptools.HttpRequestParser):
    """uvicorn's request parser (``protocol.parser``), reading on past a request that asks for
    an upgrade. ``callbacks`` is ``protocol`` but for a parser that took over (see above)."""

    def __init__(self, callbacks: Any, protocol: Any) -> None:
        super().__init__(callbacks)
        self._protocol = protocol
        # As uvicorn sets its own parser (httptools 0.6.3 and later): an answer can still be
        # written to a client that sent more after a request asking to close the connection.
        if hasattr(self, "set_dangerous_leniencies"):
            self.set_dangerous_leniencies(lenient_data_after_close=True)

    def feed_data(self, data: "bytes | bytearray | memoryview[int] | array[int]") -> None:
        # A loop, not a parser feeding the next: a read may hold hundreds of requests asking
        # for an upgrade, one nested call each.
        parser: httptools.HttpRequestParser = self
        while True:
            try:
                httptools.HttpRequestParser.feed_data(parser, data)
            except httptools.HttpParserUpgrade as upgrade:
                if self._protocol.scope["method"] == "CONNECT":
                    # httptools takes every CONNECT for an upgrade: left as uvicorn leaves it
                    # (the app answers it, 405; nothing after it is read), not replayed into
                    # the same upgrade again.
                    return
                rest = memoryview(data).cast("B")[upgrade.args[0] :].tobytes()
                parser, data = self._reading_on(rest)
            else:
                return

    def _reading_on(self, rest: bytes) -> tuple["UpgradeIgnoringParser", bytes]:
        """The parser that takes the connection over, and what it is to read."""
        protocol = self._protocol
        # httptools ended the request without reading its body: it is read now. The app has not
        # run yet (it starts once this call returns), so it sees the body as any other.
        protocol.cycle.more_body = True
        scope = protocol.scope
        head = [
            b"%s %s HTTP/%s\r\n"
            % (scope["method"].encode(), protocol.url, scope["http_version"].encode())
        ]
        head += [
            b"%s: %s\r\n" % (name, value) for name, value in scope["headers"] if name in _FRAMING
        ]
        # And whether the connection goes on after it (close, keep-alive), without the upgrade.
        if tokens := _connection_tokens(scope["headers"]):
            head.append(b"connection: %s\r\n" % b", ".join(tokens))
        head.append(b"\r\n")
        parser = UpgradeIgnoringParser(_AfterReplayedHead(protocol), protocol)
        protocol.parser = parser
        return parser, b"".join(head) + rest


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The request's ``Connection`` options but ``upgrade`` (and the upgrade's own headers)."""
    tokens = [
        token.strip()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    ]
    return [t for t in tokens if t and t.lower() not in (b"upgrade", b"http2-settings")]


class _AfterReplayedHead:
    """The callbacks of a parser that took over: those of the replayed head are dropped, the
    rest passed on to ``protocol``."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._in_head = True

    def on_message_begin(self) -> None:
        if not self._in_head:
            self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._in_head:
            self._protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            self._protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._in_head:
            self._in_head = False
        else:
            self._protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._protocol.on_body(body)

    def on_message_complete(self) -> None:
        self._protocol.on_message_complete()
