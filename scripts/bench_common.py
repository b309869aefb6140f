"""What the on-demand benchmarks (scripts/bench_engines.py, scripts/bench_rag.py,
scripts/bench_video.py) share: starting a `flowers engine` on loopback and reading a process's
peak memory."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Engine:
    """`FLOWERS engine ARGS...` on a free loopback port, its output in `log` (else discarded),
    until closed. A start that fails exits with `who`'s message and the log's end. `wrap` is a
    command that execs the rest (`taskset -c 0`), so the process is still the engine."""

    def __init__(self, flowers, args, who, log=None, env=None, wrap=()):
        self.port = free_port()
        output = open(log, "wb") if log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [*wrap, flowers, "engine", *args, "--listen", f"127.0.0.1:{self.port}"],
                stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        finally:
            if log:
                output.close()
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    tail = Path(log).read_text()[-2000:] if log else "(not kept)"
                    sys.exit(f"{who}: flowers engine {args[0]} did not start; its log ends:\n{tail}")
                time.sleep(0.1)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_mib(self):
        return peak_rss_mib(self.process.pid)

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
