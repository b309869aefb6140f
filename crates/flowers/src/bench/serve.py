"""The availability benchmark's service: serves the model version Flowers hands it.

It loads $FLOWERS_MODEL_PATH/state.json (written by train.py) and answers GET /predict with
the version it loaded, so the benchmark can check that every answer comes from a registered
version. /healthz passes only once the model is loaded. Standard library only.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOAD_SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "0.3"))
model = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200 if model else 503, {"loaded": bool(model)})
        elif self.path.startswith("/predict"):
            self.answer(200, model)
        else:
            self.answer(404, {"error": "no such path"})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def load():
    path = os.environ["FLOWERS_MODEL_PATH"]
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    time.sleep(LOAD_SECONDS)  # stands in for reading weights
    model.update(
        version=int(os.environ["FLOWERS_MODEL_VERSION"]),
        step=state["step"],
        loss=state["loss"],
        pid=os.getpid(),
    )


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["FLOWERS_PORT"])), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    threading.Thread(target=load, daemon=True).start()
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
