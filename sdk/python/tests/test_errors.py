"""Misuse gives clear errors, without a Flowers: wrong arguments, a missing environment, a
control API that does not answer or refuses."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import flowers
from flowers import _control
from conftest import SDK_DIR, free_port

pytestmark = pytest.mark.usefixtures("outside_flowers")


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path):
    """A job's environment pointing at a control URL the test chooses."""

    def set_env(control_url: str) -> pathlib.Path:
        data = tmp_path / "jobdata"
        data.mkdir(exist_ok=True)
        monkeypatch.setenv("FLOWERS_CONTROL_URL", control_url)
        monkeypatch.setenv("FLOWERS_MODEL", "m")
        monkeypatch.setenv("FLOWERS_RUN_ID", "train-1")
        monkeypatch.setenv("FLOWERS_DATA_DIR", str(data))
        monkeypatch.setattr(_control, "retry_seconds", 0.3)
        return data

    return set_env


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"step": -1}, ValueError, "step must not be negative"),
        ({"step": "3"}, TypeError, "step must be an int"),
        ({"step": True}, TypeError, "step must be an int"),
        ({"total": 1.5}, TypeError, "total must be an int"),
        ({"step": 5, "total": 4}, ValueError, "total (4) must be at least step (5)"),
        ({"metrics": {"loss": float("nan")}}, ValueError, "metric 'loss' must be a finite number"),
        ({"metrics": {"loss": float("inf")}}, ValueError, "finite"),
        ({"metrics": {1: 0.5}}, TypeError, "metric names must be str"),
        ({"metrics": {"loss": "low"}}, TypeError, "metric 'loss' must be a number"),
        ({"metrics": [0.5]}, TypeError, "metrics must be a dict"),
        ({"metrics": {f"m{i}": 1.0 for i in range(65)}}, ValueError, "at most 64"),
        ({"metrics": {"x" * 65: 1.0}}, ValueError, "1 to 64 printable characters"),
        ({"metrics": {"a\nb": 1.0}}, ValueError, "1 to 64 printable characters"),
    ],
)
def test_report_checks_its_arguments_first(kwargs, error, words):
    with pytest.raises(error) as raised:
        flowers.report(**kwargs)
    assert words in str(raised.value)


def test_job_functions_outside_flowers_name_the_missing_variable(tmp_path):
    with pytest.raises(flowers.NotUnderFlowers) as raised:
        flowers.report(step=1)
    assert raised.value.variable == "FLOWERS_CONTROL_URL"
    assert "not started by Flowers" in str(raised.value)
    with pytest.raises(flowers.NotUnderFlowers, match="FLOWERS_CONTROL_URL"):
        flowers.checkpoint({"a.txt": "x"})
    # These two work anywhere.
    assert flowers.resume() is None
    assert flowers.model_path() is None and flowers.model_version() is None


def test_a_job_without_a_model_is_told_to_name_one(monkeypatch, job_env):
    job_env("http://127.0.0.1:1")
    monkeypatch.delenv("FLOWERS_MODEL")
    with pytest.raises(flowers.NotUnderFlowers) as raised:
        flowers.checkpoint({"a.txt": "x"})
    assert raised.value.variable == "FLOWERS_MODEL"
    assert 'model = "NAME"' in str(raised.value)


@pytest.mark.parametrize(
    "argument, error, words",
    [
        (123, TypeError, "takes a path"),
        ({}, ValueError, "at least one file"),
        ({"../x": "a"}, ValueError, "must be a relative path"),
        ({"/etc/x": "a"}, ValueError, "must be a relative path"),
        ({"a//b": "a"}, ValueError, "must be a relative path"),
        ({"manifest.json": "{}"}, ValueError, "Flowers' own"),
        ({"a": "x", "a/b": "y"}, ValueError, "both a file and the directory"),
        ({"a": 5}, TypeError, "must be bytes, str or an iterable of bytes"),
        ({"a": {"k": 1}}, TypeError, "serialise it first"),
        ({7: b"x"}, TypeError, "file names must be str"),
        ("/no/such/checkpoint", ValueError, "does not exist"),
    ],
)
def test_checkpoint_refuses_bad_arguments(job_env, argument, error, words):
    data = job_env("http://127.0.0.1:1")
    with pytest.raises(error) as raised:
        flowers.checkpoint(argument)
    assert words in str(raised.value)
    leftovers = list((data / ".checkpoints").glob("tmp-*")) if (data / ".checkpoints").exists() else []
    assert leftovers == []


def test_checkpoint_refuses_bad_metrics(job_env):
    job_env("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="finite"):
        flowers.checkpoint({"a": "x"}, metrics={"eval_loss": float("nan")})


def test_an_unreachable_control_api_is_named_and_leaves_nothing(job_env, tmp_path):
    port = free_port()  # nothing listens there
    data = job_env(f"http://127.0.0.1:{port}")
    # A temporary directory of a process that died mid-write (kill -9): removed by the next
    # checkpoint, even one that then fails.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = data / ".checkpoints" / f"tmp-{dead.pid}-0"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"x" * 10)
    with pytest.raises(flowers.Unreachable) as raised:
        flowers.checkpoint({"weights.bin": b"abc"}, metrics={"loss": 1})
    message = str(raised.value)
    assert f"http://127.0.0.1:{port}/v1/models/m/versions" in message
    assert "Flowers must be running" in message
    assert not stale.exists()
    assert list((data / ".checkpoints").iterdir()) == []


def test_the_retry_window_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLOWERS_SDK_RETRY_SECONDS", "2.5")
    assert _control.retry_window() == 2.5
    monkeypatch.setenv("FLOWERS_SDK_RETRY_SECONDS", "soon")
    with pytest.raises(ValueError, match="FLOWERS_SDK_RETRY_SECONDS"):
        _control.retry_window()


class _Refusing(BaseHTTPRequestHandler):
    """A control API that refuses every call with 409, and records what it got."""

    bodies: list = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        _Refusing.bodies.append((self.path, json.loads(self.rfile.read(length))))
        data = json.dumps({"code": "run_not_live", "message": "run train-1 is not the job's live run"}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_api():
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Refusing.bodies = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_refusal_is_a_control_api_error_with_its_code(job_env, refusing_api):
    data = job_env(refusing_api)
    with pytest.raises(flowers.ControlAPIError) as raised:
        flowers.checkpoint({"w.bin": b"1", "sub/config.json": "{}"}, metrics={"loss": 0.5})
    error = raised.value
    assert (error.status, error.code) == (409, "run_not_live")
    assert error.message == "run train-1 is not the job's live run"
    assert "the call was refused" in str(error)
    path, body = _Refusing.bodies[0]
    assert path == "/v1/models/m/versions"
    assert body["run"] == "train-1" and body["metrics"] == {"loss": 0.5}
    assert pathlib.Path(body["path"]).name.startswith(f"tmp-{os.getpid()}-")
    # The temporary directory is removed after the answer, a refusal too.
    assert not pathlib.Path(body["path"]).exists()
    assert list((data / ".checkpoints").iterdir()) == []


def test_resume_says_when_its_directory_is_gone(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWERS_RESUME_FROM", str(tmp_path / "gone"))
    with pytest.raises(flowers.FlowersError, match="does not exist"):
        flowers.resume()
    monkeypatch.setenv("FLOWERS_RESUME_FROM", str(tmp_path))
    assert flowers.resume() == tmp_path


def test_progress_is_best_effort_when_flowers_is_down(tmp_path):
    # In a child process: report() registers an atexit flush, and the warning goes to stderr.
    port = free_port()
    code = (
        "import flowers\n"
        "for step in range(5):\n"
        "    flowers.report(step=step, total=10, metrics={'loss': 1.0})\n"
        "print('training went on')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env.update(PYTHONPATH=str(SDK_DIR), FLOWERS_CONTROL_URL=f"http://127.0.0.1:{port}", FLOWERS_RUN_ID="t-1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "training went on" in done.stdout
    assert done.stderr.count("progress not reported") == 1, done.stderr


def test_should_stop_turns_true_on_sigterm_outside_flowers():
    code = (
        "import os, signal, flowers\n"
        "assert flowers.should_stop() is False\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert flowers.should_stop() is True\n"
        "print('stopped cleanly')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
    env["PYTHONPATH"] = str(SDK_DIR)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "stopped cleanly" in done.stdout


def test_service_misuse_is_refused_at_once():
    app = flowers.Service()
    with pytest.raises(ValueError, match="readiness probe's path"):
        app.route("/healthz", methods=("GET",))
    with pytest.raises(ValueError, match="must start with '/'"):
        app.route("predict")
    with pytest.raises(ValueError, match="HTTP method"):
        app.route("/x", methods=("GET POST",))

    @app.route("/x")
    def x(request):
        return {}

    with pytest.raises(ValueError, match="already handled"):
        app.route("/x", methods=("POST",))(x)
    with pytest.raises(flowers.NotUnderFlowers) as raised:
        app.run()
    assert raised.value.variable == "FLOWERS_PORT" and "run(port=8000)" in str(raised.value)
    with pytest.raises(ValueError, match="status must be an int 100..=599"):
        flowers.Response({}, status=99)
    with pytest.raises(TypeError, match="WSGI callable"):
        flowers.serve_wsgi(None)


def test_the_probe_path_from_the_environment_is_reserved_too(monkeypatch):
    monkeypatch.setenv("FLOWERS_PROBE_PATH", "/ready")
    with pytest.raises(ValueError, match="readiness probe's path"):
        flowers.Service().route("/ready", methods=("GET",))


def test_bad_json_is_a_bad_request():
    request = flowers.Request("POST", "/p", {}, flowers.Headers([("Content-Type", "application/json")]), b"{nope")
    with pytest.raises(flowers.BadRequest, match="not valid JSON"):
        request.json()
    assert request.headers["content-type"] == "application/json"
    empty = flowers.Request("POST", "/p", {}, flowers.Headers(), b"")
    with pytest.raises(flowers.BadRequest, match="no body"):
        empty.json()
