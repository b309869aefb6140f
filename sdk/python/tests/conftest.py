"""Test support: a real Flowers (``flowers up`` on loopback ports, CPU slots, a temporary data
directory) and small HTTP helpers. No sleeps to wait for state: every wait polls a condition
against a deadline (``eventually``)."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import pytest

SDK_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO = SDK_DIR.parents[1]
# Generous: CI machines have two cores shared by everything.
DEADLINE = 30.0
T = TypeVar("T")


def flowers_bin() -> pathlib.Path:
    if os.environ.get("FLOWERS_BIN"):
        return pathlib.Path(os.environ["FLOWERS_BIN"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return pathlib.Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "flowers"
    return REPO / "target" / "release" / "flowers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(what: str, probe: Callable[[], Optional[T]], timeout: float = DEADLINE,
               log: Callable[[], str] = lambda: "") -> T:
    """Polls ``probe`` every 50 ms until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{log()}")
        time.sleep(0.05)


def http_call(port: int, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
              timeout: float = DEADLINE) -> Tuple[int, Dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def script(directory: pathlib.Path, name: str, text: str) -> str:
    (directory / name).write_text(textwrap.dedent(text))
    return name


def service_toml(name: str, script_name: str, env: Optional[Dict[str, str]] = None, extra: str = "") -> str:
    """A ``[services.NAME]`` running ``script_name`` with the SDK on PYTHONPATH, fast probes and
    fast restarts."""
    env = {"PYTHONPATH": str(SDK_DIR), **(env or {})}
    return f"""
[services.{name}]
command = [{json.dumps(sys.executable)}, "-u", {json.dumps(script_name)}]
env = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())} }}
{extra}
[services.{name}.probe]
interval = "100ms"
timeout = "1s"
start_timeout = "20s"

[services.{name}.restart]
backoff = "100ms"
backoff_max = "1s"
"""


def job_toml(name: str, script_name: str, env: Optional[Dict[str, str]] = None, extra: str = "") -> str:
    env = {"PYTHONPATH": str(SDK_DIR), **(env or {})}
    return f"""
[jobs.{name}]
command = [{json.dumps(sys.executable)}, "-u", {json.dumps(script_name)}]
env = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())} }}
{extra}
"""


class Flowers:
    """``flowers up`` with a config written into ``directory``."""

    def __init__(self, directory: pathlib.Path, body: str, cpu_slots: int = 2) -> None:
        self.dir = directory
        self.api_port = free_port()
        self.gateway_port = free_port()
        self.data_dir = directory / "data"
        (directory / "flowers.toml").write_text(
            f'[server]\napi_listen = "127.0.0.1:{self.api_port}"\n'
            f'gateway_listen = "127.0.0.1:{self.gateway_port}"\ndata_dir = "data"\n\n'
            f"[devices]\ncpu_slots = {cpu_slots}\n{body}"
        )
        binary = flowers_bin()
        if not binary.exists():
            pytest.fail(
                f"no flowers binary at {binary}: build it with `cargo build --release -p flowers`, "
                "or set FLOWERS_BIN"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
        env["FLOWERS_LOG"] = "info"
        self.log_path = directory / "flowers.log"
        self.process = subprocess.Popen(
            [str(binary), "up", "--config", "flowers.toml"],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.eventually("the control API to answer", lambda: self.try_api("GET", "/v1/status"))

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        outputs = []
        runs = self.data_dir / "runs"
        if runs.is_dir():
            for run in sorted(runs.iterdir()):
                output = run / "output.log"
                if output.exists():
                    outputs.append(f"--- {run.name} ---\n{output.read_text(errors='replace')[-3000:]}")
        return "--- flowers log ---\n" + text[-6000:] + "\n" + "\n".join(outputs)

    def eventually(self, what: str, probe: Callable[[], Optional[T]], timeout: float = DEADLINE) -> T:
        return eventually(what, probe, timeout, self.log)

    # -- control API

    def try_api(self, method: str, path: str, body: Any = None) -> Optional[Tuple[int, Any]]:
        try:
            status, _, data = http_call(self.api_port, method, path, body, timeout=10)
        except OSError:
            return None
        return status, json.loads(data) if data else None

    def api(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        answer = self.try_api(method, path, body)
        assert answer is not None, f"the control API did not answer {method} {path}\n{self.log()}"
        status, value = answer
        assert status == expect, f"{method} {path}: {status} {value}\n{self.log()}"
        return value

    def runs(self, owner: str) -> List[Dict[str, Any]]:
        return self.api("GET", f"/v1/runs?owner={owner}&limit=1000")

    def run(self, run_id: str) -> Dict[str, Any]:
        return self.api("GET", f"/v1/runs/{run_id}")

    def output(self, run_id: str) -> str:
        path = self.data_dir / "runs" / run_id / "output.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_output(self, run_id: str, text: str) -> None:
        self.eventually(f"{run_id} to print {text!r}", lambda: text in self.output(run_id))

    def ready_run(self, service: str) -> Dict[str, Any]:
        def probe() -> Optional[Dict[str, Any]]:
            for run in self.api("GET", f"/v1/services/{service}")["runs"]:
                if run["state"] == "ready":
                    return run
            return None

        return self.eventually(f"a ready replica of {service}", probe)

    def start_job(self, job: str) -> str:
        answer = self.api("POST", f"/v1/jobs/{job}/runs", expect=202)
        assert answer.get("run"), answer
        return answer["run"]

    def ended(self, run_id: str) -> Dict[str, Any]:
        return self.eventually(
            f"{run_id} to end",
            lambda: (lambda r: r if r["state"] in ("exited", "stopped") else None)(self.run(run_id)),
        )

    # -- gateway

    def gateway(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
                timeout: float = DEADLINE) -> Tuple[int, Dict[str, str], bytes]:
        return http_call(self.gateway_port, method, path, body, headers, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_flowers(tmp_path: pathlib.Path):
    """``start_flowers(body, cpu_slots=2)`` starts a Flowers in this test's directory; all are
    stopped (SIGTERM, then waited for) at the end of the test."""
    started: List[Flowers] = []

    def start(body: str, cpu_slots: int = 2) -> Flowers:
        server = Flowers(tmp_path, body, cpu_slots)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class LocalProcess:
    """A script run with the SDK outside Flowers (FLOWERS_PORT given by the test)."""

    def __init__(self, directory: pathlib.Path, name: str, text: str, env: Optional[Dict[str, str]] = None) -> None:
        script(directory, name, text)
        self.port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWERS_")}
        full_env.update({"PYTHONPATH": str(SDK_DIR), "FLOWERS_PORT": str(self.port)})
        full_env.update(env or {})
        self.output_path = directory / (name + ".out")
        self.process = subprocess.Popen(
            [sys.executable, "-u", name],
            cwd=directory,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self.output_path.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def call(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None):
        return http_call(self.port, method, path, body, headers)

    def wait_listening(self) -> None:
        def probe() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the script exited with {self.process.returncode}:\n{self.output()}")
            return not refused(self.port) and "listening" in self.output()

        eventually("the script to listen", probe, log=self.output)

    def wait_ready(self) -> None:
        self.wait_listening()
        eventually("the script to be ready", lambda: self.call("GET", "/healthz")[0] == 200, log=self.output)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def local(tmp_path: pathlib.Path):
    """``local(name, text, env=None)`` runs a script with the SDK outside Flowers; stopped at
    the end of the test."""
    started: List[LocalProcess] = []

    def start(name: str, text: str, env: Optional[Dict[str, str]] = None) -> LocalProcess:
        process = LocalProcess(tmp_path, name, text, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def outside_flowers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLOWERS_* variable in this process's environment."""
    for key in list(os.environ):
        if key.startswith("FLOWERS_"):
            monkeypatch.delenv(key)
