"""The exceptions of the SDK. Every message says what went wrong and what to do about it."""

from __future__ import annotations

from typing import Optional


class FlowersError(Exception):
    """The base of every error the SDK raises on purpose (besides TypeError and ValueError for
    wrong arguments)."""


class NotUnderFlowers(FlowersError):
    """A ``FLOWERS_*`` variable that the call needs is not set: the process was not started by
    Flowers (or, for jobs' model functions, the job names no model).

    ``variable`` is the missing variable's name.
    """

    def __init__(self, variable: str, hint: str = "") -> None:
        self.variable = variable
        message = (
            f"{variable} is not set: this process was not started by Flowers"
            if not hint
            else f"{variable} is not set: {hint}"
        )
        super().__init__(message)


class ControlAPIError(FlowersError):
    """Flowers' control API answered, and refused the call (4xx: the call was wrong; 5xx:
    Flowers failed). ``status`` is the HTTP status, ``code`` and ``message`` come from its JSON
    error (``{"code": "...", "message": "..."}``), ``url`` is what was called."""

    def __init__(self, status: int, code: str, message: str, url: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        self.url = url
        whose = "the call was refused" if status < 500 else "Flowers failed"
        super().__init__(f"{url}: {status} {code}: {message} ({whose})")


class Unreachable(FlowersError):
    """The control API did not answer (connection refused, or no answer in time) for the whole
    retry window. ``url`` is the address called; ``seconds`` how long the SDK kept trying."""

    def __init__(self, url: str, seconds: float, cause: Optional[BaseException] = None) -> None:
        self.url = url
        self.seconds = seconds
        reason = f" ({cause})" if cause is not None else ""
        super().__init__(
            f"the Flowers control API at {url} did not answer for {seconds:g} s{reason}. "
            "Flowers must be running: check `flowers ps` (or start it with `flowers up`); "
            "FLOWERS_CONTROL_URL says where this process expects it."
        )


class BadRequest(FlowersError):
    """Raise it inside a route handler to answer 400 with ``{"code": "bad_request", "message":
    MESSAGE}``; ``request.json()`` raises it for a body that is not JSON."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
