"""Services on a real Flowers: readiness waits for load() (the gateway holds requests
meanwhile), concurrent requests, the drain on SIGTERM, WSGI and ASGI apps."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any, Dict

import pytest

from conftest import Flowers, http_call, refused, script, service_toml

# A load() that waits for a file the test creates: readiness is then decided by the test,
# not by a duration.
GATED = """
    import os, pathlib, time, flowers

    app = flowers.Service()
    gate = pathlib.Path(os.environ["GATE"])

    @app.load
    def load(model_path):
        print("loading", flush=True)
        while not gate.exists():
            time.sleep(0.02)

    @app.route("/gated/hello", methods=("GET",))
    def hello(request):
        return {"hello": "world", "run": os.environ["FLOWERS_RUN_ID"]}

    app.run()
"""

PLAIN = """
    import os, pathlib, threading, time, flowers

    app = flowers.Service()
    together = threading.Barrier(8, timeout=20)
    slow_gate = pathlib.Path(os.environ["SLOW_GATE"])

    @app.route("/plain/together", methods=("GET",))
    def meet(request):
        started = time.time()
        together.wait()  # 8 handlers at once, or a BrokenBarrierError
        return {"started": started, "ended": time.time()}

    @app.route("/plain/slow", methods=("GET",))
    def slow(request):
        print("slow request started", flush=True)
        while not slow_gate.exists():
            time.sleep(0.02)
        return {"slow": "done"}

    @app.route("/plain/hello", methods=("GET",))
    def hello(request):
        return {"hello": "plain"}

    app.run()
"""

WSGI = """
    import json, os, pathlib, time, flowers

    gate = pathlib.Path(os.environ["GATE"])
    state = {}

    def load(model_path):
        while not gate.exists():
            time.sleep(0.02)
        state["loaded"] = True

    def app(environ, start_response):
        body = json.dumps({"kind": "wsgi", "path": environ["SCRIPT_NAME"] + environ["PATH_INFO"],
                           "loaded": state.get("loaded", False)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    flowers.serve_wsgi(app, load=load)
"""

ASGI = """
    import json, os, pathlib, time, flowers

    gate = pathlib.Path(os.environ["GATE"])
    state = {}

    def load(model_path):
        while not gate.exists():
            time.sleep(0.02)
        state["loaded"] = True

    async def app(scope, receive, send):
        assert scope["type"] == "http"  # no lifespan support: allowed
        body = json.dumps({"kind": "asgi", "path": scope["path"], "loaded": state.get("loaded", False)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    flowers.serve_asgi(app, load=load)
"""


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("services")
    gates = {name: directory / f"{name}.gate" for name in ("gated", "wsgi", "asgi", "slow")}
    body = "".join([
        service_toml("gated", script(directory, "gated.py", GATED), {"GATE": str(gates["gated"])},
                     'routes = [{ path = "/gated" }]'),
        service_toml("plain", script(directory, "plain.py", PLAIN), {"SLOW_GATE": str(gates["slow"])},
                     'routes = [{ path = "/plain" }]\nstop_grace = "20s"'),
        service_toml("wsgi", script(directory, "wsgi_app.py", WSGI), {"GATE": str(gates["wsgi"])},
                     'routes = [{ path = "/wsgi" }]'),
        service_toml("asgi", script(directory, "asgi_app.py", ASGI), {"GATE": str(gates["asgi"])},
                     'routes = [{ path = "/asgi" }]'),
    ])
    server = Flowers(directory, body, cpu_slots=1)
    yield server, gates
    server.stop()


def starting_run(server: Flowers, service: str) -> Dict[str, Any]:
    def probe():
        runs = server.api("GET", f"/v1/services/{service}")["runs"]
        return next((r for r in runs if r["port"] and r["state"] == "starting"), None)

    return server.eventually(f"a starting replica of {service}", probe)


def direct_readiness(port: int):
    try:
        status, _, body = http_call(port, "GET", "/healthz", timeout=5)
    except OSError:
        return None
    return status, json.loads(body)


def test_readiness_waits_for_load_and_the_gateway_holds_requests(services):
    server, gates = services
    run = starting_run(server, "gated")
    server.wait_output(run["id"], "loading")
    # The probe sees 503 while load() runs.
    assert server.eventually("a 503 from the replica", lambda: direct_readiness(run["port"])) == (
        503, {"ready": False})
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(server.gateway("GET", "/gated/hello")))
    waiting.start()
    # Still loading, so the request waits in the gateway's hold queue rather than failing.
    assert direct_readiness(run["port"]) == (503, {"ready": False})
    assert server.run(run["id"])["state"] == "starting"
    assert waiting.is_alive() and not answers
    gates["gated"].touch()
    waiting.join(30)
    status, _, body = answers[0]
    assert (status, json.loads(body)) == (200, {"hello": "world", "run": run["id"]})
    assert direct_readiness(run["port"]) == (200, {"ready": True})
    assert server.run(run["id"])["state"] == "ready"


def test_concurrent_requests_are_handled_at_once(services):
    server, _ = services
    server.ready_run("plain")
    answers = []

    def one():
        answers.append(server.gateway("GET", "/plain/together"))

    clients = [threading.Thread(target=one) for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    assert [status for status, _, _ in answers] == [200] * 8, answers
    times = [json.loads(body) for _, _, body in answers]
    # Every handler started before any ended: the 8 requests overlapped.
    assert max(t["started"] for t in times) < min(t["ended"] for t in times)


def test_sigterm_drains_requests_in_flight_and_refuses_new_connections(services):
    server, gates = services
    run = server.ready_run("plain")
    port = run["port"]
    # A kept connection, idle after one request: closed by the drain.
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    idle.request("GET", "/plain/hello")
    assert idle.getresponse().read() == b'{"hello": "plain"}'
    # A slow request straight to the replica: the gateway does not know it is in flight, so
    # Flowers sends SIGTERM at once and the SDK alone must let it finish.
    answers = []
    slow = threading.Thread(target=lambda: answers.append(http_call(port, "GET", "/plain/slow")))
    slow.start()
    server.wait_output(run["id"], "slow request started")
    server.api("POST", f"/v1/runs/{run['id']}/stop", expect=202)
    server.eventually("new connections to be refused", lambda: refused(port))
    idle.sock.settimeout(30)
    assert idle.sock.recv(100) == b""  # closed by the server
    assert slow.is_alive() and not answers  # still in flight
    gates["slow"].touch()
    slow.join(30)
    status, headers, body = answers[0]
    assert (status, json.loads(body)) == (200, {"slow": "done"})
    assert headers.get("connection") == "close"
    ended = server.ended(run["id"])
    assert (ended["exit_code"], ended["exit_signal"]) == (0, None), ended
    assert "drained; stopped" in server.output(run["id"])
    # A replacement serves through the gateway.
    server.ready_run("plain")
    assert server.gateway("GET", "/plain/hello")[0] == 200


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_wsgi_and_asgi_apps_wait_for_load(services, kind):
    server, gates = services
    run = starting_run(server, kind)
    assert server.eventually("a 503 from the replica", lambda: direct_readiness(run["port"])) == (
        503, {"ready": False})
    # Before load() returned, the app itself is not called.
    status, headers, _ = http_call(run["port"], "GET", f"/{kind}/x")
    assert (status, headers.get("retry-after")) == (503, "1")
    gates[kind].touch()
    status, _, body = server.gateway("GET", f"/{kind}/x")
    assert (status, json.loads(body)) == (200, {"kind": kind, "path": f"/{kind}/x", "loaded": True})
    assert server.run(run["id"])["state"] == "ready"
    assert direct_readiness(run["port"]) == (200, {"ready": True})

