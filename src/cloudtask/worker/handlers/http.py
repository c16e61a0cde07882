"""``http``: makes one HTTP request, only to hosts listed in ``HTTP_ALLOWED_HOSTS``.

The host is checked before any connection is made, redirects are not followed (one could lead to a
host not allowed), the whole request has a timeout (``HTTP_TIMEOUT_SECONDS``), and a response
body larger than ``HTTP_MAX_RESPONSE_BYTES`` fails the job. A 5xx or 429 answer fails the
attempt (retryable); any other answer completes the job with its status code, headers and body.
"""

import asyncio
from typing import Any

import httpx
from pydantic import ValidationError

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.job_types import MAX_RESULT_BYTES, HttpPayload
from cloudtask.contracts.urls import allowed_host, url_host
from cloudtask.errors import PermanentFailure
from cloudtask.settings import Settings


class HttpHandler:
    def __init__(self, settings: Settings) -> None:
        # (host, None) allows every port of the host; (host, port) that port alone.
        self._allowed = {allowed_host(entry) for entry in settings.http_allowed_hosts}
        self._timeout = settings.http_timeout_seconds
        # No body larger than a job's result may be (it is the result's), escaped or not.
        self._max_bytes = min(settings.http_max_response_bytes, MAX_RESULT_BYTES)

    def is_allowed(self, url: str) -> bool:
        host, port = url_host(url)
        return (host, None) in self._allowed or (host, port) in self._allowed

    async def __call__(self, payload: Any) -> dict[str, Any]:
        try:
            request = HttpPayload.model_validate(payload)
        except ValidationError as exc:
            raise PermanentFailure(f"invalid http payload: {exc.errors()[0]['msg']}") from None
        if not self.is_allowed(request.url):
            host, port = url_host(request.url)
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise PermanentFailure(f"host {shown!r} is not in CLOUDTASK_HTTP_ALLOWED_HOSTS")
        content = None
        headers = dict(request.headers)
        if request.body is not None:
            if isinstance(request.body, str):
                content = request.body.encode()
            else:
                content = jsoncodec.dumps(request.body)
                # Unless the job gave one, in any case: both went out, and servers read either.
                if not any(name.lower() == "content-type" for name in headers):
                    headers["Content-Type"] = "application/json"
        try:
            # The client's timeout bounds each wait (to connect, for each read); this one the
            # whole request, so that a server sending a byte now and then cannot hold it longer.
            async with (
                asyncio.timeout(self._timeout),
                httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client,
                client.stream(
                    request.method, request.url, headers=headers, content=content
                ) as reply,
            ):
                body = await self._read(reply)
        except TimeoutError:
            raise TimeoutError(
                f"the HTTP request took longer than {self._timeout:g} s "
                "(CLOUDTASK_HTTP_TIMEOUT_SECONDS)"
            ) from None
        if reply.status_code >= 500 or reply.status_code == 429:
            # Its scheme, host and port: the error is kept with the job and logged, and the rest
            # of a URL often carries a secret (a password, a token in the query, a webhook's
            # path).
            url = httpx.URL(request.url)
            where = f"{url.scheme}://{url.netloc.decode('ascii').rpartition('@')[2]}"
            raise ConnectionError(f"HTTP {reply.status_code} from {where}: {body[:200]}")
        return {"statusCode": reply.status_code, "headers": dict(reply.headers), "body": body}

    async def _read(self, reply: httpx.Response) -> str:
        chunks: list[bytes] = []
        size = 0
        async for chunk in reply.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise PermanentFailure(f"the response is larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks).decode(reply.encoding or "utf-8", errors="replace")
