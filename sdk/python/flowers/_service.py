"""Services: functions as JSON HTTP handlers, or an existing WSGI/ASGI app, on ``$FLOWERS_PORT``.

A service in ten lines::

    import flowers

    app = flowers.Service()
    model = {}

    @app.load
    def load(model_path):             # the promoted version's directory, or None
        model["weights"] = (model_path / "weights.bin").read_bytes() if model_path else b""

    @app.route("/predict")
    def predict(request):
        return {"label": len(model["weights"]) % 10, "input": request.json()}

    app.run()

What the SDK does for every kind of service (``Service``, :func:`serve_wsgi`,
:func:`serve_asgi`):

* binds ``127.0.0.1:$FLOWERS_PORT``;
* answers Flowers' readiness probe, ``GET /healthz`` (and ``$FLOWERS_PROBE_PATH`` when set),
  with 503 ``{"ready": false}`` until ``load()`` has returned, then 200 ``{"ready": true}``;
  other requests get 503 until then (the gateway does not send any: it holds them). When
  ``load()`` raises, the traceback is logged and the process exits with status 1 (Flowers
  restarts it with backoff);
* handles requests concurrently (a thread per connection; the ASGI server: asyncio), with
  HTTP/1.1 keep-alive;
* on SIGTERM (and SIGINT): stops accepting connections, closes idle kept connections, lets the
  requests in flight finish, and returns from ``run()`` (the process then exits 0). A second
  signal exits at once with status 1.

Routes: the gateway forwards requests unchanged, so a service routed at ``/digits`` receives
``/digits/predict``. A request's path is matched against the routes as it is first, then with
the longest of ``$FLOWERS_ROUTE_PREFIXES`` (the service's route prefixes, set by Flowers)
removed: ``/digits/predict`` reaches ``@app.route("/predict")`` and ``/digits`` reaches
``@app.route("/")``. WSGI apps see the prefix as ``SCRIPT_NAME`` and the rest as
``PATH_INFO``; ASGI apps see it as ``root_path`` (``path`` stays whole, as ASGI servers do).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import pathlib
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from ._errors import BadRequest, NotUnderFlowers

READINESS_PATH = "/healthz"
HeaderList = List[Tuple[str, str]]
Handler = TypeVar("Handler", bound=Callable[..., Any])
LoadHook = Callable[..., Any]

_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable",
}


def _log(message: str) -> None:
    print(f"flowers: {message}", file=sys.stderr, flush=True)


def model_version() -> Optional[int]:
    """The model version this replica serves (``FLOWERS_MODEL_VERSION``), or ``None`` when the
    service follows no model (or runs outside Flowers)."""
    raw = os.environ.get("FLOWERS_MODEL_VERSION")
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"FLOWERS_MODEL_VERSION must be an integer, got {raw!r}") from None


def model_path() -> Optional[pathlib.Path]:
    """The directory of the model version this replica serves (``FLOWERS_MODEL_PATH``), or
    ``None`` when the service follows no model (or runs outside Flowers)."""
    raw = os.environ.get("FLOWERS_MODEL_PATH")
    return pathlib.Path(raw) if raw else None


def _readiness_paths() -> List[str]:
    paths = [READINESS_PATH]
    probe = os.environ.get("FLOWERS_PROBE_PATH")
    if probe and probe not in paths:
        paths.append(probe.split("?", 1)[0])
    return paths


def _route_prefixes() -> List[str]:
    """``$FLOWERS_ROUTE_PREFIXES``, normalised (no trailing slash), longest first."""
    prefixes = []
    for raw in os.environ.get("FLOWERS_ROUTE_PREFIXES", "").split():
        prefix = "/" + raw.strip("/")
        if prefix not in prefixes:
            prefixes.append(prefix)
    return sorted(prefixes, key=len, reverse=True)


def _split_prefix(path: str, prefixes: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(prefix, rest) for the longest prefix that ``path`` starts with at a segment boundary."""
    for prefix in prefixes:
        if prefix == "/":
            return None  # stripping "/" changes nothing
        if path == prefix or path.startswith(prefix + "/"):
            return prefix, path[len(prefix):] or "/"
    return None


def _resolve_port(port: Optional[int]) -> int:
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int 0..=65535, got {port!r}")
        return port
    raw = os.environ.get("FLOWERS_PORT")
    if not raw:
        raise NotUnderFlowers(
            "FLOWERS_PORT",
            "this process was not started by Flowers. Run it under Flowers "
            "(a [services.NAME] in flowers.toml), or pass a port for local use: run(port=8000)",
        )
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"FLOWERS_PORT must be a port number, got {raw!r}") from None


def _call_load(load: Optional[LoadHook]) -> None:
    if load is None:
        return
    path = model_path()
    try:
        parameters = inspect.signature(load).parameters.values()
        takes_path = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in parameters
        )
    except (TypeError, ValueError):
        takes_path = True
    if takes_path:
        load(path)
    else:
        load()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def _error_body(code: str, message: str) -> bytes:
    return _json_bytes({"code": code, "message": message})


def _head(status: int, headers: HeaderList, reason: Optional[str] = None) -> bytes:
    reason = reason or _REASONS.get(status) or BaseHTTPRequestHandler.responses.get(
        status, ("Unknown",)
    )[0]
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _has(headers: HeaderList, name: str) -> bool:
    name = name.lower()
    return any(key.lower() == name for key, _ in headers)


# ---------------------------------------------------------------------------------------------
# Request and Response


class Headers(Mapping[str, str]):
    """Request headers: a read-only mapping whose keys are case-insensitive (``headers["content-
    type"]`` and ``headers["Content-Type"]`` are the same). A header sent several times is
    joined with ``", "``."""

    def __init__(self, pairs: Iterable[Tuple[str, str]] = ()) -> None:
        self._items: Dict[str, Tuple[str, str]] = {}
        for name, value in pairs:
            key = name.lower()
            if key in self._items:
                self._items[key] = (self._items[key][0], self._items[key][1] + ", " + value)
            else:
                self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class Request:
    """One HTTP request to a route handler.

    ``method`` (``"POST"``), ``path`` (as received, without the query string, e.g.
    ``/digits/predict``), ``route`` (the route it matched, e.g. ``/predict``), ``query``
    (``dict[str, str]``; for a name given several times the last value wins), ``headers``
    (:class:`Headers`, case-insensitive), ``body`` (``bytes``), ``client`` (``(host, port)``).
    """

    __slots__ = ("method", "path", "route", "query", "headers", "body", "client", "_json")

    def __init__(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Headers,
        body: bytes,
        route: str = "",
        client: Tuple[str, int] = ("", 0),
    ) -> None:
        self.method = method
        self.path = path
        self.route = route or path
        self.query = dict(query)
        self.headers = headers
        self.body = body
        self.client = client
        self._json: Any = _UNSET

    def json(self) -> Any:
        """The body parsed as JSON (UTF-8). Raises :class:`BadRequest` (a 400 answer for the
        client, unless you catch it) when the body is empty or not JSON."""
        if self._json is _UNSET:
            if not self.body.strip():
                raise BadRequest("the request has no body; send a JSON document")
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise BadRequest(f"the body is not UTF-8 text: {error}") from None
            except ValueError as error:
                raise BadRequest(f"the body is not valid JSON: {error}") from None
        return self._json

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} ({len(self.body)} bytes)>"


_UNSET = object()


class Response:
    """An answer with a chosen status, headers or content type.

    ``body``: ``bytes`` (sent as is, ``application/octet-stream`` unless ``content_type``
    says otherwise), ``str`` (``text/plain; charset=utf-8``) or any other JSON-serialisable
    value (``application/json``). ``headers``: a mapping or a list of pairs.
    """

    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(
        self,
        body: Any = b"",
        status: int = 200,
        headers: Optional[Union[Mapping[str, str], Iterable[Tuple[str, str]]]] = None,
        content_type: Optional[str] = None,
    ) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an int 100..=599, got {status!r}")
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError(f"content_type must be a str, got {type(content_type).__name__}")
        self.body = body
        self.status = status
        pairs: HeaderList = []
        if headers is not None:
            items = headers.items() if isinstance(headers, Mapping) else headers
            for name, value in items:
                if not isinstance(name, str) or not isinstance(value, str):
                    raise TypeError(f"header names and values must be str, got {name!r}: {value!r}")
                if "\n" in name or "\r" in name or "\n" in value or "\r" in value:
                    raise ValueError(f"header {name!r} contains a line break")
                pairs.append((name, value))
        self.headers = pairs
        self.content_type = content_type

    def _encode(self) -> Tuple[int, HeaderList, bytes]:
        if isinstance(self.body, (bytes, bytearray, memoryview)):
            data, kind = bytes(self.body), "application/octet-stream"
        elif isinstance(self.body, str):
            data, kind = self.body.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            data, kind = _json_bytes(self.body), "application/json"
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        if self.content_type is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            headers.append(("Content-Type", self.content_type))
        elif not _has(headers, "content-type"):
            headers.append(("Content-Type", kind))
        return self.status, headers, data


# ---------------------------------------------------------------------------------------------
# The threaded HTTP/1.1 server shared by Service and serve_wsgi


class _State:
    """Readiness and draining, shared by the server's threads."""

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.draining = False
        self.readiness_paths = _readiness_paths()
        self.prefixes = _route_prefixes()


class _Connection:
    __slots__ = ("sock", "busy")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy = False


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], responder: Callable[["_Handler"], None]) -> None:
        self.responder = responder
        self.state = _State()
        self.lock = threading.Lock()
        self.connections: Dict[int, _Connection] = {}
        super().__init__(address, _Handler)

    def get_request(self) -> Tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # The gateway keeps connections: without NODELAY, a small answer can wait 40 ms for
        # the peer's delayed ACK (Nagle).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections[id(request)] = _Connection(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.pop(id(request), None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # the client went away; nothing to say
        _log(f"error on a connection from {client_address}:")
        traceback.print_exc()

    def set_busy(self, request: Any, busy: bool) -> bool:
        """Marks a connection busy or idle; returns whether the server is draining."""
        with self.lock:
            connection = self.connections.get(id(request))
            if connection is not None:
                connection.busy = busy
            return self.state.draining

    def close_idle(self) -> int:
        """Wakes the threads waiting for a next request on kept connections (they see end of
        input and close); returns the number of connections still open."""
        with self.lock:
            self.state.draining = True
            for connection in self.connections.values():
                if not connection.busy:
                    try:
                        # SHUT_RD only: a request read just now can still be answered.
                        connection.sock.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
            return len(self.connections)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flowers"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the gateway keeps the access log

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        self.server.set_busy(self.connection, True)
        try:
            if len(self.raw_requestline) > 65536:
                self.send_all(414, [("Content-Type", "application/json")],
                              _error_body("uri_too_long", "the request line is too long"))
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.server.responder(self)
            self.wfile.flush()
        finally:
            if self.server.set_busy(self.connection, False):
                self.close_connection = True

    # -- reading

    def read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked). Raises ValueError when framed
        wrong; the connection is then closed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ValueError("the chunked body ended early")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ValueError("the chunked body ended early")
                parts.append(data)
                self.rfile.readline(3)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        length = int(raw)
        if length < 0:
            raise ValueError("negative Content-Length")
        data = self.rfile.read(length)
        if len(data) < length:
            raise ValueError("the body ended early")
        return data

    def header_pairs(self) -> List[Tuple[str, str]]:
        return list(self.headers.items())

    # -- writing

    def finish_headers(self, headers: HeaderList) -> HeaderList:
        headers = list(headers)
        if self.close_connection or self.server.state.draining:
            self.close_connection = True
            if not _has(headers, "connection"):
                headers.append(("Connection", "close"))
        return headers

    def send_all(self, status: int, headers: HeaderList, body: bytes, head_only: bool = False) -> None:
        """The status line, headers and body in one write (one TCP segment for small answers)."""
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        data = _head(status, self.finish_headers(headers)) + (b"" if head_only else body)
        self.wfile.write(data)

    def send_json(self, status: int, value: Any, extra: HeaderList = ()) -> None:  # type: ignore[assignment]
        self.send_all(status, [("Content-Type", "application/json"), *extra], _json_bytes(value))

    def answer_readiness_or_wait(self, path: str) -> bool:
        """Answers the readiness probe, or 503 to any request before load() returned. Returns
        True when it answered."""
        state = self.server.state
        if path in state.readiness_paths:
            ready = state.loaded.is_set() and not state.draining
            self.send_json(200 if ready else 503, {"ready": ready})
            return True
        if not state.loaded.is_set():
            self.send_json(
                503,
                {"code": "not_ready", "message": "the service is still loading its model"},
                [("Retry-After", "1")],
            )
            return True
        return False


def _run_threaded(
    responder: Callable[[_Handler], None],
    load: Optional[LoadHook],
    host: str,
    port: Optional[int],
    what: str,
) -> None:
    """Binds, loads in the background, serves until SIGTERM/SIGINT, drains; the shared body
    of Service.run and serve_wsgi."""
    number = _resolve_port(port)
    server = _HTTPServer((host, number), responder)
    stop = threading.Event()
    failed = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            _log("second signal: exiting without waiting for requests in flight")
            os._exit(1)
        _log(f"{signal.Signals(signum).name}: draining")
        stop.set()

    previous = _install_signals(on_signal)
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="flowers-serve", daemon=True
    )
    serving.start()
    _log(f"{what} listening on http://{host}:{server.server_address[1]}")

    def load_in_background() -> None:
        started = time.monotonic()
        try:
            _call_load(load)
        except BaseException:
            _log("load() raised; exiting with status 1 (Flowers restarts the replica):")
            traceback.print_exc()
            sys.stderr.flush()
            failed.set()
            stop.set()
            return
        server.state.loaded.set()
        if load is not None:
            _log(f"loaded in {time.monotonic() - started:.2f} s; ready")

    threading.Thread(target=load_in_background, name="flowers-load", daemon=True).start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        # Stop accepting: the listening socket closes, new connections are refused.
        server.shutdown()
        server.server_close()
        while server.close_idle():
            time.sleep(0.02)
        _restore_signals(previous)
    if failed.is_set():
        raise SystemExit(1)
    _log("drained; stopped")


def _install_signals(handler: Callable[[int, Any], None]) -> Dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: Mapping[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# Service


class Service:
    """A service made of route handlers: functions taking a :class:`Request` and returning a
    JSON-serialisable value (200, ``application/json``) or a :class:`Response`. One per
    process. See the module documentation for readiness, routes and shutdown."""

    def __init__(self) -> None:
        self._routes: Dict[str, Dict[str, Callable[[Request], Any]]] = {}
        self._load: Optional[LoadHook] = None

    @property
    def routes(self) -> Dict[str, Tuple[str, ...]]:
        """Each route's path and its methods."""
        return {path: tuple(methods) for path, methods in self._routes.items()}

    def load(self, function: Handler) -> Handler:
        """Decorator: ``function(model_path)`` runs once, in a background thread, before the
        service is ready. ``model_path`` is ``pathlib.Path($FLOWERS_MODEL_PATH)``, or ``None``
        when the service follows no model. Until it returns, the readiness probe answers 503
        (the gateway holds requests meanwhile); if it raises, the process exits with status 1."""
        if not callable(function):
            raise TypeError(f"@app.load needs a function, got {function!r}")
        if self._load is not None:
            raise ValueError("@app.load is already set; a service has one load() hook")
        self._load = function
        return function

    def route(
        self, path: str, methods: Sequence[str] = ("POST",)
    ) -> Callable[[Handler], Handler]:
        """Decorator: the function answers requests to ``path`` (exactly, or with the service's
        route prefix in front) with one of ``methods`` (default ``("POST",)``). Raises
        ``ValueError`` for a path not starting with ``/``, the readiness path (``/healthz``),
        or a path and method defined twice."""
        if not isinstance(path, str):
            raise TypeError(f"a route path must be a str, got {type(path).__name__}")
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(f"a route path must start with '/' and have no query, got {path!r}")
        if path in _readiness_paths():
            raise ValueError(
                f"{path} is the readiness probe's path; the SDK answers it (503 until load() "
                "returned, then 200). Pick another path for your route"
            )
        if isinstance(methods, str):
            methods = (methods,)
        clean = []
        for method in methods:
            if not isinstance(method, str) or not method.isalpha():
                raise ValueError(f"an HTTP method must be a word like 'GET', got {method!r}")
            clean.append(method.upper())
        if not clean:
            raise ValueError(f"route {path} needs at least one method")
        existing = self._routes.setdefault(path, {})

        def decorate(function: Handler) -> Handler:
            if not callable(function):
                raise TypeError(f"@app.route({path!r}) needs a function, got {function!r}")
            for method in clean:
                if method in existing:
                    raise ValueError(f"{method} {path} is already handled by {existing[method]!r}")
            for method in clean:
                existing[method] = function
            return function

        return decorate

    def run(self, host: str = "127.0.0.1", port: Optional[int] = None) -> None:
        """Serves until SIGTERM or SIGINT, then drains and returns. Binds ``host``:``port``
        (default ``127.0.0.1:$FLOWERS_PORT``; raises :class:`NotUnderFlowers` when neither
        ``port`` nor ``FLOWERS_PORT`` is given). Exits with status 1 if ``load()`` raised."""
        if not self._routes:
            raise ValueError("the service has no routes; add one with @app.route(\"/path\")")
        _run_threaded(self._respond, self._load, host, port, "service")

    def _find(self, path: str, prefixes: Sequence[str]) -> Tuple[Optional[str], str]:
        if path in self._routes:
            return path, path
        split = _split_prefix(path, prefixes)
        if split is not None and split[1] in self._routes:
            return split[1], split[1]
        return None, split[1] if split else path

    def _respond(self, handler: _Handler) -> None:
        state = handler.server.state
        target = handler.path
        path, _, query_string = target.partition("?")
        try:
            body = handler.read_body()
        except ValueError as error:
            handler.close_connection = True
            handler.send_json(400, {"code": "bad_request", "message": f"bad request body: {error}"})
            return
        route, stripped = self._find(path, state.prefixes)
        if route is None and stripped in state.readiness_paths:
            path = stripped
        if handler.answer_readiness_or_wait(path):
            return
        if route is None:
            known = ", ".join(sorted(self._routes))
            handler.send_json(
                404, {"code": "not_found", "message": f"no route for {path}; routes: {known}"}
            )
            return
        methods = self._routes[route]
        function = methods.get(handler.command)
        if function is None:
            allowed = ", ".join(sorted(methods))
            handler.send_json(
                405,
                {"code": "method_not_allowed",
                 "message": f"{handler.command} is not allowed on {route}; use {allowed}"},
                [("Allow", allowed)],
            )
            return
        query = dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))
        request = Request(
            handler.command,
            path,
            query,
            Headers(handler.header_pairs()),
            body,
            route=route,
            client=handler.client_address[:2],
        )
        try:
            result = function(request)
        except BadRequest as error:
            handler.send_json(400, {"code": "bad_request", "message": error.message})
            return
        except Exception:
            _log(f"{handler.command} {path}: the handler raised:")
            traceback.print_exc()
            handler.send_json(
                500, {"code": "internal", "message": "the handler raised an exception; see the service's log"}
            )
            return
        try:
            if isinstance(result, Response):
                status, headers, data = result._encode()
            else:
                status, headers, data = 200, [("Content-Type", "application/json")], _json_bytes(result)
        except (TypeError, ValueError) as error:
            _log(
                f"{handler.command} {path}: the handler's answer is not JSON-serialisable "
                f"({error}); return a dict, list, str, number, bool or None (no NaN), or "
                "flowers.Response(bytes) for other content"
            )
            handler.send_json(
                500,
                {"code": "internal", "message": "the handler's answer is not JSON; see the service's log"},
            )
            return
        handler.send_all(status, headers, data, head_only=handler.command == "HEAD")


# ---------------------------------------------------------------------------------------------
# WSGI


def _wsgi_responder(app: Callable[..., Any]) -> Callable[[_Handler], None]:
    def respond(handler: _Handler) -> None:
        state = handler.server.state
        path, _, query_string = handler.path.partition("?")
        try:
            body = handler.read_body()
        except ValueError as error:
            handler.close_connection = True
            handler.send_json(400, {"code": "bad_request", "message": f"bad request body: {error}"})
            return
        split = _split_prefix(path, state.prefixes)
        script_name, path_info = split if split else ("", path)
        if handler.answer_readiness_or_wait(path if not split or path in state.readiness_paths else path_info):
            return
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": handler.command,
            "SCRIPT_NAME": urllib.parse.unquote(script_name, "latin-1"),
            "PATH_INFO": urllib.parse.unquote(path_info, "latin-1"),
            "QUERY_STRING": query_string,
            "SERVER_NAME": handler.server.server_address[0],
            "SERVER_PORT": str(handler.server.server_address[1]),
            "SERVER_PROTOCOL": handler.request_version,
            "REMOTE_ADDR": handler.client_address[0],
            "REMOTE_PORT": str(handler.client_address[1]),
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in handler.header_pairs():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue
            else:
                key = "HTTP_" + key
                environ[key] = environ[key] + "," + value if key in environ else value
        _WsgiResponse(handler).run(app, environ)

    return respond


class _WsgiResponse:
    def __init__(self, handler: _Handler) -> None:
        self.handler = handler
        self.status: Optional[str] = None
        self.headers: HeaderList = []
        self.sent = False
        self.chunked = False

    def start_response(self, status: str, headers: HeaderList, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response was called twice without exc_info")
        self.status = status
        self.headers = list(headers)
        return self.write

    def _head(self, first: bytes, last: bool) -> bytes:
        assert self.status is not None
        code, _, reason = self.status.partition(" ")
        headers = list(self.headers)
        if last and not _has(headers, "content-length"):
            headers.append(("Content-Length", str(len(first))))
        elif not _has(headers, "content-length"):
            if self.handler.request_version == "HTTP/1.1":
                self.chunked = True
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                self.handler.close_connection = True
        headers = self.handler.finish_headers(headers)
        return _head(int(code), headers, reason or None)

    def _frame(self, data: bytes) -> bytes:
        if not self.chunked or not data:
            return data
        return b"%x\r\n" % len(data) + data + b"\r\n"

    def write(self, data: bytes, last: bool = False) -> None:
        if self.status is None:
            raise AssertionError("write() before start_response()")
        head = b""
        if not self.sent:
            head = self._head(data, last)
            self.sent = True
        if self.handler.command == "HEAD":
            data = b""
        self.handler.wfile.write(head + self._frame(data))

    def run(self, app: Callable[..., Any], environ: Dict[str, Any]) -> None:
        try:
            result = app(environ, self.start_response)
            try:
                if isinstance(result, (list, tuple)) and not self.sent:
                    self.write(b"".join(result), last=True)
                else:
                    for data in result:
                        if data:
                            self.write(data)
                    if not self.sent:
                        self.write(b"", last=True)
                    elif self.chunked and self.handler.command != "HEAD":
                        self.handler.wfile.write(b"0\r\n\r\n")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except (ConnectionError, BrokenPipeError):
            self.handler.close_connection = True
        except Exception:
            _log(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}: the WSGI app raised:")
            traceback.print_exc()
            if self.sent:
                self.handler.close_connection = True
            else:
                self.handler.send_json(
                    500, {"code": "internal", "message": "the app raised an exception; see the service's log"}
                )


def serve_wsgi(
    wsgi_app: Callable[..., Any],
    load: Optional[LoadHook] = None,
    *,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
) -> None:
    """Serves an existing WSGI app (Flask, Django, ...) with a thread per connection, the
    readiness probe, and the drain on SIGTERM described in the module documentation.
    ``load(model_path)`` runs first, as ``@app.load`` does; the app gets no request before it
    returned. Blocks until drained."""
    if not callable(wsgi_app):
        raise TypeError(f"serve_wsgi needs a WSGI callable app(environ, start_response), got {wsgi_app!r}")
    if load is not None and not callable(load):
        raise TypeError(f"load must be a function or None, got {load!r}")
    _run_threaded(_wsgi_responder(wsgi_app), load, host, port, "WSGI app")


# ---------------------------------------------------------------------------------------------
# ASGI


class _AsgiConnection:
    __slots__ = ("writer", "idle")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.idle = True


class _AsgiServer:
    def __init__(self, app: Callable[..., Any], load: Optional[LoadHook], host: str, port: Optional[int]) -> None:
        self.app = app
        self.load = load
        self.host = host
        self.port = _resolve_port(port)
        self.ready = False
        self.draining = False
        self.failed = False
        self.readiness_paths = _readiness_paths()
        self.prefixes = _route_prefixes()
        self.connections: Dict[int, _AsgiConnection] = {}
        self.tasks: "set[asyncio.Task[Any]]" = set()
        self.lifespan_state: Dict[str, Any] = {}
        self.lifespan_task: Optional["asyncio.Task[Any]"] = None
        self.to_lifespan: "Optional[asyncio.Queue[Dict[str, Any]]]" = None
        self.from_lifespan: "Optional[asyncio.Queue[Dict[str, Any]]]" = None

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        server = await asyncio.start_server(self.connection, self.host, self.port, backlog=128)
        bound = server.sockets[0].getsockname()[1]
        _log(f"ASGI app listening on http://{self.host}:{bound}")
        signals = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.on_signal, signum)
                signals.append(signum)
        try:
            if await self.lifespan_startup():
                # A daemon thread, not the default executor: a SIGTERM during a long load()
                # must not wait for it at exit.
                started = time.monotonic()

                def load_in_background() -> None:
                    try:
                        _call_load(self.load)
                    except BaseException:
                        _log("load() raised; exiting with status 1 (Flowers restarts the replica):")
                        traceback.print_exc()
                        sys.stderr.flush()
                        loop.call_soon_threadsafe(self.load_failed)
                        return
                    loop.call_soon_threadsafe(self.loaded, time.monotonic() - started)

                threading.Thread(target=load_in_background, name="flowers-load", daemon=True).start()
                await self.stop.wait()
        finally:
            server.close()  # no new connections
            self.draining = True
            for connection in self.connections.values():
                if connection.idle:
                    connection.writer.close()
            while self.tasks:
                await asyncio.wait(set(self.tasks))
            await self.lifespan_shutdown()
            for signum in signals:
                loop.remove_signal_handler(signum)

    def loaded(self, seconds: float) -> None:
        self.ready = True
        if self.load is not None:
            _log(f"loaded in {seconds:.2f} s; ready")

    def load_failed(self) -> None:
        self.failed = True
        self.stop.set()

    def on_signal(self, signum: int) -> None:
        if self.stop.is_set():
            _log("second signal: exiting without waiting for requests in flight")
            os._exit(1)
        _log(f"{signal.Signals(signum).name}: draining")
        self.stop.set()

    # -- lifespan

    async def lifespan_startup(self) -> bool:
        """Runs the app's lifespan startup if it has one; False when it failed."""
        self.to_lifespan = asyncio.Queue()
        self.from_lifespan = asyncio.Queue()
        to_app, from_app = self.to_lifespan, self.from_lifespan
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.lifespan_state}

        async def run() -> None:
            try:
                await self.app(scope, to_app.get, from_app.put)
            except BaseException as error:  # an app without lifespan support raises here
                await from_app.put({"type": "_raised", "error": error})
            else:
                await from_app.put({"type": "_returned"})

        self.lifespan_task = asyncio.ensure_future(run())
        await to_app.put({"type": "lifespan.startup"})
        message = await from_app.get()
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            return True
        if kind == "lifespan.startup.failed":
            _log(f"the app's lifespan startup failed: {message.get('message', '')}; exiting with status 1")
            self.failed = True
            return False
        # Raised or returned without answering: no lifespan support, which is allowed.
        self.lifespan_task = None
        return True

    async def lifespan_shutdown(self) -> None:
        if self.lifespan_task is None or self.to_lifespan is None or self.from_lifespan is None:
            return
        if self.lifespan_task.done():
            return
        await self.to_lifespan.put({"type": "lifespan.shutdown"})
        try:
            message = await asyncio.wait_for(self.from_lifespan.get(), 30)
        except asyncio.TimeoutError:
            _log("the app's lifespan shutdown did not finish in 30 s")
            return
        if message["type"] == "lifespan.shutdown.failed":
            _log(f"the app's lifespan shutdown failed: {message.get('message', '')}")
        elif message["type"] == "_raised":
            _log(f"the app's lifespan shutdown raised: {message['error']!r}")

    # -- connections

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        connection = _AsgiConnection(writer)
        self.connections[id(connection)] = connection
        try:
            while not self.draining:
                connection.idle = True
                keep = await self.one_request(reader, writer, connection)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            _log("error on a connection:")
            traceback.print_exc()
        finally:
            del self.connections[id(connection)]
            self.tasks.discard(task)
            writer.close()

    async def one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _AsgiConnection
    ) -> bool:
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            return False
        if not line:
            return False
        connection.idle = False
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            await self.simple(writer, 400, {"code": "bad_request", "message": "bad request line"}, close=True)
            return False
        headers: List[Tuple[bytes, bytes]] = []
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
            if len(headers) > 200:
                await self.simple(writer, 431, {"code": "bad_request", "message": "too many headers"}, close=True)
                return False
        lookup = {name: value for name, value in headers}
        connection_header = lookup.get(b"connection", b"").lower()
        keep = (version == "HTTP/1.1" and b"close" not in connection_header) or (
            version == "HTTP/1.0" and b"keep-alive" in connection_header
        )
        try:
            if b"chunked" in lookup.get(b"transfer-encoding", b"").lower():
                parts = []
                while True:
                    size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readline()
                body = b"".join(parts)
            else:
                length = int(lookup.get(b"content-length", b"0") or b"0")
                body = await reader.readexactly(length) if length > 0 else b""
        except (ValueError, asyncio.IncompleteReadError):
            await self.simple(writer, 400, {"code": "bad_request", "message": "bad request body"}, close=True)
            return False
        if lookup.get(b"expect", b"").lower() == b"100-continue":
            pass  # the body is already read: the client sent it without waiting
        raw_path, _, query = target.partition("?")
        path = urllib.parse.unquote(raw_path)
        split = _split_prefix(path, self.prefixes)
        keep = keep and not self.draining
        if path in self.readiness_paths or (split is not None and split[1] in self.readiness_paths):
            ready = self.ready and not self.draining
            await self.simple(writer, 200 if ready else 503, {"ready": ready}, close=not keep)
            return keep
        if not self.ready:
            await self.simple(
                writer, 503, {"code": "not_ready", "message": "the service is still loading its model"},
                close=not keep, extra=[(b"retry-after", b"1")],
            )
            return keep
        peer = writer.get_extra_info("peername") or ("", 0)
        sockname = writer.get_extra_info("sockname") or (self.host, self.port)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version.split("/", 1)[-1],
            "method": method.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": split[0] if split else "",
            "headers": headers,
            "client": (peer[0], peer[1]),
            "server": (sockname[0], sockname[1]),
            "state": dict(self.lifespan_state),
        }
        return await self.call_app(scope, body, writer, keep, method.upper() == "HEAD")

    async def simple(
        self, writer: asyncio.StreamWriter, status: int, value: Any, close: bool = False,
        extra: Sequence[Tuple[bytes, bytes]] = (),
    ) -> None:
        body = _json_bytes(value)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in extra)
        if close:
            headers.append(("Connection", "close"))
        writer.write(_head(status, headers) + body)
        await writer.drain()

    async def call_app(
        self, scope: Dict[str, Any], body: bytes, writer: asyncio.StreamWriter, keep: bool, head: bool
    ) -> bool:
        done = asyncio.Event()
        delivered = False
        started: List[Any] = []  # [status, headers]
        state = {"sent": False, "chunked": False, "finished": False, "keep": keep}

        async def receive() -> Dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                if started:
                    raise RuntimeError("http.response.start sent twice")
                started.extend([int(message["status"]), list(message.get("headers", []))])
                return
            if kind != "http.response.body":
                return
            if not started:
                raise RuntimeError("http.response.body before http.response.start")
            if state["finished"]:
                raise RuntimeError("http.response.body after the response ended")
            data = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            out = b""
            if not state["sent"]:
                status, raw_headers = started
                pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers]
                if not _has(pairs, "content-length"):
                    if not more:
                        pairs.append(("Content-Length", str(len(data))))
                    elif scope["http_version"] == "1.1":
                        state["chunked"] = True
                        pairs.append(("Transfer-Encoding", "chunked"))
                    else:
                        state["keep"] = False
                if not state["keep"] or self.draining:
                    state["keep"] = False
                    if not _has(pairs, "connection"):
                        pairs.append(("Connection", "close"))
                out = _head(status, pairs)
                state["sent"] = True
            if not head:
                if state["chunked"]:
                    if data:
                        out += b"%x\r\n" % len(data) + data + b"\r\n"
                    if not more:
                        out += b"0\r\n\r\n"
                else:
                    out += data
            if not more:
                state["finished"] = True
            if out:
                writer.write(out)
                await writer.drain()

        try:
            await self.app(scope, receive, send)
        except (ConnectionError, asyncio.CancelledError):
            done.set()
            return False
        except Exception:
            done.set()
            _log(f"{scope['method']} {scope['path']}: the ASGI app raised:")
            traceback.print_exc()
            if not state["sent"]:
                await self.simple(
                    writer, 500, {"code": "internal", "message": "the app raised an exception; see the service's log"},
                    close=True,
                )
            return False
        done.set()
        if not state["sent"]:
            _log(f"{scope['method']} {scope['path']}: the ASGI app returned without answering")
            await self.simple(
                writer, 500, {"code": "internal", "message": "the app returned without an answer"}, close=True
            )
            return False
        if not state["finished"]:
            return False  # a response cut short: the connection cannot be reused
        return bool(state["keep"]) and not self.draining


def serve_asgi(
    asgi_app: Callable[..., Any],
    load: Optional[LoadHook] = None,
    *,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
) -> None:
    """Serves an existing ASGI 3 app (Starlette, FastAPI, ...) on asyncio, standard library
    only: HTTP scopes (no WebSockets), and the lifespan protocol when the app supports it
    (startup before ``load()``, shutdown after the drain). Readiness and the drain on SIGTERM
    are as described in the module documentation. Blocks until drained."""
    if not callable(asgi_app):
        raise TypeError(f"serve_asgi needs an ASGI 3 app, async app(scope, receive, send), got {asgi_app!r}")
    if load is not None and not callable(load):
        raise TypeError(f"load must be a function or None, got {load!r}")
    server = _AsgiServer(asgi_app, load, host, port)
    asyncio.run(server.main())
    if server.failed:
        raise SystemExit(1)
    _log("drained; stopped")


__all__ = [
    "Headers",
    "Request",
    "Response",
    "Service",
    "model_path",
    "model_version",
    "serve_asgi",
    "serve_wsgi",
]
