"""Services run by the SDK outside Flowers (FLOWERS_PORT set by the test): routing with the
route prefixes, answers and errors, keep-alive, WSGI and ASGI details, a load() that fails."""

from __future__ import annotations

import http.client
import json

from conftest import eventually

ROUTES = """
    import flowers

    app = flowers.Service()

    @app.route("/predict", methods=("GET", "POST"))
    def predict(request):
        body = request.json() if request.method == "POST" else None
        return {"path": request.path, "route": request.route, "query": request.query,
                "agent": request.headers.get("x-agent"), "body": body}

    @app.route("/")
    def root(request):
        return flowers.Response("root", status=201, headers={"X-Kind": "root"})

    @app.route("/digits/exact", methods=("GET",))
    def exact(request):
        return "exact beats prefix"

    @app.route("/exact", methods=("GET",))
    def stripped(request):
        return "stripped"

    @app.route("/nan", methods=("GET",))
    def nan(request):
        return {"loss": float("nan")}

    @app.route("/raw", methods=("GET",))
    def raw(request):
        return flowers.Response(b"\\x00\\x01")

    @app.route("/refuse")
    def refuse(request):
        raise flowers.BadRequest("send a 'text' field")

    @app.route("/crash", methods=("GET",))
    def crash(request):
        raise RuntimeError("boom")

    app.run()
"""


def test_routes_match_exactly_then_without_the_route_prefix(local):
    service = local("routes.py", ROUTES, env={"FLOWERS_ROUTE_PREFIXES": "/digits /api/digits"})
    service.wait_ready()
    status, _, body = service.call("GET", "/digits/predict?a=1&a=2&b=", headers={"X-Agent": "t"})
    assert status == 200
    assert json.loads(body) == {"path": "/digits/predict", "route": "/predict", "query": {"a": "2", "b": ""},
                                "agent": "t", "body": None}
    status, _, body = service.call("POST", "/api/digits/predict", {"x": 1})
    assert (status, json.loads(body)["body"], json.loads(body)["route"]) == (200, {"x": 1}, "/predict")
    status, headers, body = service.call("POST", "/digits")
    assert (status, body, headers["x-kind"], headers["content-type"]) == (
        201, b"root", "root", "text/plain; charset=utf-8")
    assert service.call("GET", "/digits/exact")[2] == b'"exact beats prefix"'
    assert service.call("GET", "/api/digits/exact")[2] == b'"stripped"'
    # A prefix counts only at a segment boundary.
    assert service.call("GET", "/digitsexact")[0] == 404
    # The readiness path answers under the prefix too.
    assert service.call("GET", "/digits/healthz")[0] == 200


def test_errors_are_json_with_what_to_do(local):
    service = local("errors.py", ROUTES)
    service.wait_ready()
    status, _, body = service.call("GET", "/nope")
    assert status == 404 and json.loads(body)["code"] == "not_found" and "/predict" in json.loads(body)["message"]
    status, headers, body = service.call("GET", "/")
    assert status == 405 and headers["allow"] == "POST" and json.loads(body)["code"] == "method_not_allowed"
    status, _, body = service.call("POST", "/predict", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["message"]
    status, _, body = service.call("POST", "/refuse", {})
    assert (status, json.loads(body)) == (400, {"code": "bad_request", "message": "send a 'text' field"})
    status, _, body = service.call("GET", "/crash")
    assert status == 500 and json.loads(body)["code"] == "internal"
    status, _, body = service.call("GET", "/nan")
    assert status == 500 and "not JSON" in json.loads(body)["message"]
    status, headers, body = service.call("GET", "/raw")
    assert (status, headers["content-type"], body) == (200, "application/octet-stream", b"\x00\x01")
    output = eventually("the logged errors", lambda: "not JSON-serialisable" in service.output() and service.output())
    assert "RuntimeError: boom" in output
    assert "return a dict, list, str, number, bool or None (no NaN)" in output


def test_kept_connections_carry_many_requests(local):
    service = local("keepalive.py", ROUTES)
    service.wait_ready()
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    connection.request("GET", "/healthz")
    connection.getresponse().read()
    first = connection.sock
    for i in range(20):
        connection.request("POST", "/predict", body=json.dumps({"i": i}), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["body"] == {"i": i}
    assert connection.sock is first  # never reconnected
    # A chunked body is read whole.
    connection.putrequest("POST", "/predict")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    connection.send(b'4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n')
    response = connection.getresponse()
    assert json.loads(response.read())["body"] == {"a": 1}
    connection.close()


def test_a_failing_load_exits_with_status_1(local):
    service = local("failing.py", """
        import flowers
        app = flowers.Service()

        @app.load
        def load(model_path):
            raise FileNotFoundError("weights.bin is missing")

        @app.route("/p")
        def p(request):
            return {}

        app.run()
    """)
    assert service.process.wait(30) == 1
    assert "FileNotFoundError: weights.bin is missing" in service.output()
    assert "exiting with status 1" in service.output()


WSGI = """
    import flowers

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (part for part in [b"a", b"b", b"c"])
        body = {"script_name": environ["SCRIPT_NAME"], "path_info": environ["PATH_INFO"],
                "query": environ["QUERY_STRING"], "input": environ["wsgi.input"].read().decode(),
                "agent": environ.get("HTTP_X_AGENT")}
        data = __import__("json").dumps(body).encode()
        start_response("202 Accepted", [("Content-Type", "application/json")])
        return [data]

    flowers.serve_wsgi(app)
"""


def test_a_wsgi_app_is_mounted_at_its_route_prefix(local):
    service = local("wsgi_app.py", WSGI, env={"FLOWERS_ROUTE_PREFIXES": "/w"})
    service.wait_ready()
    status, headers, body = service.call("POST", "/w/x/y?q=1", b"hello", headers={"X-Agent": "t"})
    assert status == 202
    assert json.loads(body) == {"script_name": "/w", "path_info": "/x/y", "query": "q=1", "input": "hello", "agent": "t"}
    assert json.loads(service.call("GET", "/other")[2])["script_name"] == ""
    status, headers, body = service.call("GET", "/w/stream")
    assert (status, body, headers.get("transfer-encoding")) == (200, b"abc", "chunked")


ASGI = """
    import flowers

    events = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    events.append("startup")
                    scope["state"]["greeting"] = "hi"
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    print("lifespan shutdown", flush=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        message = await receive()
        if scope["path"].endswith("/stream"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for part in (b"a", b"b", b"c"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = {"path": scope["path"], "root_path": scope["root_path"], "query": scope["query_string"].decode(),
                "body": message["body"].decode(), "events": events, "greeting": scope["state"].get("greeting")}
        data = __import__("json").dumps(body).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    flowers.serve_asgi(app)
"""


def test_an_asgi_app_gets_lifespan_root_path_and_streaming(local):
    service = local("asgi_app.py", ASGI, env={"FLOWERS_ROUTE_PREFIXES": "/a"})
    service.wait_ready()
    status, _, body = service.call("POST", "/a/x?q=1", b"hello")
    assert status == 200
    assert json.loads(body) == {"path": "/a/x", "root_path": "/a", "query": "q=1", "body": "hello",
                                "events": ["startup"], "greeting": "hi"}
    status, headers, body = service.call("GET", "/a/stream")
    assert (status, body, headers.get("transfer-encoding")) == (200, b"abc", "chunked")
    assert service.stop() == 0
    assert "lifespan shutdown" in service.output()
