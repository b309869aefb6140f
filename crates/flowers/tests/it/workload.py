"""A small real workload for Flowers' integration tests: an HTTP server on $FLOWERS_PORT.

Behaviour is chosen by environment variables, so each test declares what it needs in its
flowers.toml:

  WORKLOAD_READY_AFTER=SECONDS   /healthz answers 503 until then (readiness)
  WORKLOAD_READY_FILE=NAME       /healthz answers 503 unless $FLOWERS_MODEL_PATH/NAME exists
                                 (a model version that does not load)
  WORKLOAD_EXIT_AFTER=SECONDS    exit by itself after that long ...
  WORKLOAD_EXIT_CODE=N           ... with this code (default 1)
  WORKLOAD_IGNORE_SIGTERM=1      ignore SIGTERM (to be killed after the grace period)
  WORKLOAD_LOG_LINES=N           print N numbered lines at start (log capture and rotation)
  WORKLOAD_GRANDCHILD=1          start a `sleep` grandchild (no process may leak)
  WORKLOAD_NO_SERVER=1           do not listen at all (a job)
  WORKLOAD_LOCK_FILE=PATH        hold an exclusive lock on PATH, exiting with 1 at once if another
                                 process holds it (a single-writer service, like tantivy's index)

Endpoints: /healthz, /env (FLOWERS_*, CUDA_VISIBLE_DEVICES, PYTHONPATH, WORKLOAD_MARK as JSON), /headers, /pid, /grandchild,
/crash?code=N (exit now), /sick (make /healthz fail from now on); POST /sleep?secs=S answers
after S seconds (a request in flight).
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

started = time.monotonic()
ready_after = float(os.environ.get("WORKLOAD_READY_AFTER", "0"))
ready_file = os.environ.get("WORKLOAD_READY_FILE")
sick = threading.Event()
grandchild = None


def log(message):
    print(message, flush=True)


def on_sigterm(signum, frame):
    log("got SIGTERM, exiting")
    if grandchild is not None:
        grandchild.terminate()
    sys.stdout.flush()
    os._exit(0)


if os.environ.get("WORKLOAD_IGNORE_SIGTERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_sigterm)

for i in range(int(os.environ.get("WORKLOAD_LOG_LINES", "0"))):
    print(f"line {i:06d} " + "x" * 50)
sys.stdout.flush()
print("to stderr", file=sys.stderr, flush=True)

if os.environ.get("WORKLOAD_GRANDCHILD") == "1":
    grandchild = subprocess.Popen(["sleep", "1000"])

exit_after = os.environ.get("WORKLOAD_EXIT_AFTER")
if exit_after is not None:
    code = int(os.environ.get("WORKLOAD_EXIT_CODE", "1"))

    def exit_later():
        time.sleep(float(exit_after))
        log(f"exiting with code {code}")
        os._exit(code)

    threading.Thread(target=exit_later, daemon=True).start()


def unprefixed(path):
    """The path without the service's longest route prefix ($FLOWERS_ROUTE_PREFIXES), as the
    gateway forwards paths unchanged."""
    best = ""
    for prefix in os.environ.get("FLOWERS_ROUTE_PREFIXES", "").split():
        prefix = prefix.rstrip("/")
        if len(prefix) > len(best) and (path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?")):
            best = prefix
    rest = path[len(best):]
    return rest if rest.startswith("/") else "/" + rest


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(unprefixed(self.path))
        if url.path == "/healthz":
            ok = time.monotonic() - started >= ready_after and not sick.is_set()
            if ready_file is not None:
                model = os.environ.get("FLOWERS_MODEL_PATH", "")
                ok = ok and os.path.exists(os.path.join(model, ready_file))
            self.answer(200 if ok else 503, {"ok": ok})
        elif url.path == "/env":
            keys = [k for k in os.environ if k.startswith("FLOWERS_") or k in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH", "WORKLOAD_MARK")]
            self.answer(200, {k: os.environ[k] for k in keys})
        elif url.path == "/headers":
            self.answer(200, {k.lower(): v for k, v in self.headers.items()})
        elif url.path == "/pid":
            self.answer(200, {"pid": os.getpid()})
        elif url.path == "/grandchild":
            self.answer(200, {"pid": grandchild.pid if grandchild else None})
        elif url.path == "/crash":
            code = int(parse_qs(url.query).get("code", ["3"])[0])
            log(f"crashing with code {code}")
            os._exit(code)
        elif url.path == "/sick":
            sick.set()
            self.answer(200, {"sick": True})
        else:
            self.answer(404, {"error": "not found"})


    def do_POST(self):
        url = urlparse(unprefixed(self.path))
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode() if length else ""
        if url.path == "/sleep":
            secs = float(parse_qs(url.query).get("secs", ["1"])[0])
            log(f"sleeping {secs}s for {body!r}")
            time.sleep(secs)
            self.answer(200, {"slept": secs, "body": body, "run": os.environ.get("FLOWERS_RUN_ID")})
        else:
            self.answer(404, {"error": "not found"})


lock_file = os.environ.get("WORKLOAD_LOCK_FILE")
if lock_file is not None:
    lock = open(lock_file, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"{lock_file} is locked by another process")
        sys.exit(1)

if os.environ.get("WORKLOAD_NO_SERVER") == "1":
    log("working without a server")
    while True:
        time.sleep(3600)

port = int(os.environ["FLOWERS_PORT"])
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
log(f"listening on 127.0.0.1:{port}")
server.serve_forever()
