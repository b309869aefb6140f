"""A tiny JSON client for Flowers' control API (``FLOWERS_CONTROL_URL``), standard library only.

A call that gets no HTTP answer at all (connection refused, reset, or timed out) is tried again
with a growing pause for up to :data:`retry_seconds` (Flowers may be restarting: Runs survive a
restart of Flowers), then raises :class:`~flowers.Unreachable`. An HTTP error answer is never
retried: it raises :class:`~flowers.ControlAPIError` at once.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from typing import Any, Optional, Tuple

from ._errors import ControlAPIError, NotUnderFlowers, Unreachable

#: How long a call keeps trying while the control API does not answer. ``None``: the
#: ``FLOWERS_SDK_RETRY_SECONDS`` environment variable, else 30 seconds.
retry_seconds: Optional[float] = None

DEFAULT_RETRY_SECONDS = 30.0
CONNECT_TIMEOUT = 5.0


def retry_window() -> float:
    """The retry window in seconds: :data:`retry_seconds`, else ``FLOWERS_SDK_RETRY_SECONDS``,
    else 30."""
    if retry_seconds is not None:
        return float(retry_seconds)
    raw = os.environ.get("FLOWERS_SDK_RETRY_SECONDS")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"FLOWERS_SDK_RETRY_SECONDS must be a number of seconds, got {raw!r}"
            ) from None
        if value >= 0:
            return value
        raise ValueError(f"FLOWERS_SDK_RETRY_SECONDS must not be negative, got {raw!r}")
    return DEFAULT_RETRY_SECONDS


def env(name: str, hint: str = "") -> str:
    """The value of a ``FLOWERS_*`` variable, or :class:`NotUnderFlowers` naming it."""
    value = os.environ.get(name)
    if not value:
        raise NotUnderFlowers(name, hint)
    return value


def control_url() -> str:
    return env("FLOWERS_CONTROL_URL").rstrip("/")


def _attempt(
    method: str, url: str, body: Optional[bytes], timeout: float
) -> Tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"FLOWERS_CONTROL_URL must be an http:// URL, got {url!r}")
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.netloc, timeout=min(timeout, CONNECT_TIMEOUT))
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def call(
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = 30.0,
    retry: Optional[float] = None,
) -> Any:
    """Calls ``{FLOWERS_CONTROL_URL}{path}`` with ``body`` as JSON and returns the decoded JSON
    answer of a 2xx. ``retry``: seconds to keep trying while there is no answer (default: the
    :func:`retry_window`; 0 tries once)."""
    url = control_url() + path
    data = None if body is None else json.dumps(body).encode()
    window = retry_window() if retry is None else retry
    deadline = time.monotonic() + window
    pause = 0.1
    while True:
        try:
            status, raw = _attempt(method, url, data, timeout)
            break
        except (OSError, http.client.HTTPException) as error:
            # No HTTP answer (refused, reset, timed out, cut off): Flowers is down or
            # restarting. OSError covers ConnectionError and socket.timeout.
            if time.monotonic() + pause > deadline:
                raise Unreachable(url, window, error) from error
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
    if 200 <= status < 300:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ControlAPIError(
                status, "bad_answer", f"the answer is not JSON: {raw[:200]!r}", url
            ) from None
    code, message = "http_%d" % status, raw[:500].decode("utf-8", "replace")
    try:
        answer = json.loads(raw)
        if isinstance(answer, dict):
            code = str(answer.get("code", code))
            message = str(answer.get("message", message))
    except ValueError:
        pass
    raise ControlAPIError(status, code, message, url)


__all__ = ["call", "control_url", "env", "retry_window", "retry_seconds"]
