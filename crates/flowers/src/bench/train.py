"""The availability benchmark's training job: a better checkpoint every few seconds.

Each "epoch" takes $BENCH_EPOCH_SECONDS and lowers the loss; after each, the state is written
to a fresh directory and registered with Flowers as a version of $FLOWERS_MODEL (the promotion
policy promotes it when its loss is lower). It resumes from $FLOWERS_RESUME_FROM, and on
SIGTERM (preemption) it exits at once: its last checkpoint is already registered. Standard
library only.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request

EPOCH = float(os.environ.get("BENCH_EPOCH_SECONDS", "2"))
stopping = False


def on_term(*_):
    global stopping
    stopping = True


def register(state):
    directory = tempfile.mkdtemp(prefix="ckpt-", dir=os.environ["FLOWERS_DATA_DIR"])
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump(state, f)
    body = json.dumps(
        {"path": directory, "metrics": {"loss": state["loss"]}, "run": os.environ["FLOWERS_RUN_ID"]}
    ).encode()
    url = "%s/v1/models/%s/versions" % (os.environ["FLOWERS_CONTROL_URL"], os.environ["FLOWERS_MODEL"])
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    # Flowers keeps its own copy of the files.
    shutil.rmtree(directory, ignore_errors=True)
    print("registered version", answer["version"]["version"], "loss", state["loss"], answer["note"], flush=True)


def main():
    signal.signal(signal.SIGTERM, on_term)
    state = {"step": 0, "loss": 1.0}
    resume = os.environ.get("FLOWERS_RESUME_FROM")
    if resume:
        with open(os.path.join(resume, "state.json")) as f:
            state = json.load(f)
        print("resumed from", resume, "at step", state["step"], flush=True)
    while not stopping:
        deadline = time.monotonic() + EPOCH
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.05)
        if stopping:
            break
        state = {"step": state["step"] + 1, "loss": round(state["loss"] * 0.9, 6)}
        register(state)
    print("stopping at step", state["step"], flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
