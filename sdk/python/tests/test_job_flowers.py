"""Jobs on a real Flowers: a checkpoint cut by kill -9 registers nothing, resume after
preemption continues from the last checkpoint, progress shows in the Run."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess

import pytest

from conftest import flowers_bin, job_toml, script, service_toml

# Run 1: one good checkpoint, then one written slowly (the test kills it mid-write).
# Run 2: resumes from version 1 and checkpoints again.
WRITER = """
    import os, pathlib, time, flowers

    flowers.should_stop()
    data = pathlib.Path(os.environ["FLOWERS_DATA_DIR"])
    last = flowers.resume()
    if not (data / "first-run").exists():
        (data / "first-run").touch()
        version = flowers.checkpoint({"a.txt": "first"}, metrics={"loss": 1.0})
        print("registered", version.version, flush=True)

        def big():
            for i in range(100000):
                if i == 4:
                    print("writing slowly", flush=True)
                yield b"x" * 65536
                time.sleep(0.02)

        flowers.checkpoint({"small.txt": "b", "big.bin": big()}, metrics={"loss": 0.5})
        print("the slow checkpoint finished: the test did not kill it", flush=True)
    else:
        version = flowers.checkpoint({"c.txt": "third"}, metrics={"loss": 0.1})
        print("registered", version.version, "resumed from", last, flush=True)
"""


def test_a_checkpoint_killed_mid_write_registers_nothing(start_flowers, tmp_path):
    server = start_flowers(job_toml("writer", script(tmp_path, "writer.py", WRITER), extra='model = "m"'))
    run = server.start_job("writer")
    server.wait_output(run, "writing slowly")
    assert "registered 1" in server.output(run)
    pid = server.run(run)["child_pid"]
    os.kill(pid, signal.SIGKILL)
    ended = server.ended(run)
    assert ended["exit_signal"] == signal.SIGKILL, ended

    model = server.api("GET", "/v1/models/m")
    assert [v["version"] for v in model["versions"]] == [1]
    models_dir = server.data_dir / "models" / "m"
    assert sorted(p.name for p in models_dir.iterdir()) == ["1"]  # no staging, no half version
    assert sorted(p.name for p in (models_dir / "1").iterdir()) == ["a.txt", "manifest.json"]
    checkpoints = server.data_dir / "data" / "writer" / ".checkpoints"
    stale = checkpoints / f"tmp-{pid}-1"
    assert sorted(p.name for p in checkpoints.iterdir()) == [stale.name]
    assert (stale / "big.bin").stat().st_size > 0  # cut off mid-write

    # The next Run resumes from version 1, and its checkpoint removes the stale directory.
    second = server.start_job("writer")
    server.wait_output(second, "registered 2")
    assert f"resumed from {models_dir / '1'}" in server.output(second)
    assert server.ended(second)["exit_code"] == 0
    assert list(checkpoints.iterdir()) == []
    versions = server.api("GET", "/v1/models/m")["versions"]
    assert [(v["version"], v["metrics"], v["run"]) for v in versions] == [
        (2, {"loss": 0.1}, second), (1, {"loss": 1.0}, run)]


# Trains TOTAL steps, a checkpoint after each, the loss falling: every checkpoint is promoted,
# and on two slots every promotion after the first preempts the job (the role swap). After a
# checkpoint the job waits until its version is served (or it is stopped), so that each
# promotion's swap happens whatever the machine's speed. Each Run says where it resumed from;
# the versions' "step" metrics must then count 1, 2, 3, ... with no step redone.
TRAIN = """
    import json, os, time, urllib.request, flowers

    def served(version):
        url = os.environ["FLOWERS_CONTROL_URL"] + "/v1/models/m"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return version in json.load(answer)["model"]["serving"]

    TOTAL = 4
    flowers.should_stop()
    last = flowers.resume()
    step = json.loads((last / "state.json").read_text())["step"] if last else 0
    print(f"start at step {step} from {last}", flush=True)
    while step < TOTAL and not flowers.should_stop():
        time.sleep(0.1)  # one step of training
        step += 1
        flowers.report(step=step, total=TOTAL)
        version = flowers.checkpoint({"state.json": json.dumps({"step": step})},
                                     metrics={"loss": 1.0 / (step + 1), "step": step})
        print(f"step {step} is version {version.version} (promoted: {version.promoted})", flush=True)
        deadline = time.monotonic() + 30
        while not flowers.should_stop() and not served(version.version) and time.monotonic() < deadline:
            time.sleep(0.05)
    print("done" if step >= TOTAL else f"preempted at step {step}", flush=True)
"""

SERVE = """
    import json, flowers

    app = flowers.Service()
    state = {}

    @app.load
    def load(model_path):
        state.update(json.loads((model_path / "state.json").read_text()))

    @app.route("/", methods=("GET",))
    def answer(request):
        return {"version": flowers.model_version(), "step": state["step"]}

    app.run()
"""


def test_resume_after_preemption_continues_from_the_last_checkpoint(start_flowers, tmp_path):
    body = """
[models.m]
promote = { metric = "loss", mode = "min" }
keep = 10
""" + service_toml("web", script(tmp_path, "serve.py", SERVE), extra='devices = 1\nmodel = "m"\nroutes = [{ path = "/" }]\nstop_grace = "5s"') + job_toml(
        "train", script(tmp_path, "train.py", TRAIN),
        extra='devices = 1\npreemptible = true\nautostart = true\nstop_grace = "20s"\nmodel = "m"')
    server = start_flowers(body, cpu_slots=2)

    def finished():
        runs = server.runs("train")
        return runs if any("done" in server.output(r["id"]) for r in runs) else None

    runs = server.eventually("the job to train all its steps", finished, timeout=90)
    runs.sort(key=lambda r: r["created_ms"])
    events = server.api("GET", "/v1/events?owner=train&limit=1000")
    assert any(e["kind"] == "job_preempted" for e in events), events
    assert len(runs) >= 2

    versions = sorted(server.api("GET", "/v1/models/m")["versions"], key=lambda v: v["version"])
    steps = [int(v["metrics"]["step"]) for v in versions]
    assert steps == list(range(1, 5)), steps  # no step redone after a preemption, none lost
    step_of = {pathlib.Path(v["path"]).name: int(v["metrics"]["step"]) for v in versions}
    for index, run in enumerate(runs):
        output = server.output(run["id"])
        start = re.search(r"start at step (\d+) from (\S+)", output)
        assert start, output
        if index == 0:
            assert start.groups() == ("0", "None")
        else:
            # Each Run resumed from its job's newest checkpoint at the time.
            resumed_from = pathlib.Path(start.group(2))
            assert int(start.group(1)) == step_of[resumed_from.name] > 0
            previous = [v for v in versions if v["run"] == runs[index - 1]["id"]]
            if previous:
                assert resumed_from.name == str(previous[-1]["version"])
        if index < len(runs) - 1:
            assert "preempted at step" in output or "done" in output, output
            assert run["exit_code"] == 0, run  # it stopped on should_stop(), not by SIGKILL
    # The service serves the last version.
    server.eventually(
        "the last version to be served",
        lambda: json.loads(server.gateway("GET", "/")[2]).get("step") == 4,
    )


REPORTER = """
    import os, pathlib, time, flowers

    flowers.should_stop()
    for step in range(1, 6):
        flowers.report(step=step, total=5, metrics={"loss": 1.0 / step})
    print("reported", flush=True)
    gate = pathlib.Path(os.environ["GATE"])
    while not gate.exists() and not flowers.should_stop():
        time.sleep(0.02)
"""


def test_progress_shows_in_the_run(start_flowers, tmp_path):
    gate = tmp_path / "gate"
    server = start_flowers(job_toml("reporter", script(tmp_path, "reporter.py", REPORTER), {"GATE": str(gate)}))
    missing = server.try_api("POST", "/v1/runs/no-such-run/progress", {"step": 1, "total": None, "metrics": {}})
    if missing and missing[0] == 404 and missing[1]["message"].startswith("no such endpoint"):
        pytest.skip("this Flowers has no POST /v1/runs/{id}/progress yet (it lands on main); merge main")
    run = server.start_job("reporter")
    server.wait_output(run, "reported")
    # Five calls within a second: the first is sent at once, the latest within a second.
    progress = server.eventually(
        "the latest progress", lambda: (lambda p: p if p and p.get("step") == 5 else None)(server.run(run).get("progress"))
    )
    assert (progress["step"], progress["total"], progress["metrics"]) == (5, 5, {"loss": 0.2})
    assert progress["updated_ms"] > 0
    ps = subprocess.run([str(flowers_bin()), "ps", "--api", f"http://127.0.0.1:{server.api_port}"],
                        capture_output=True, text=True, timeout=30)
    assert "5/5 (100%) loss=0.2" in ps.stdout, ps.stdout + ps.stderr
    gate.touch()
    assert server.ended(run)["exit_code"] == 0
    assert "progress not reported" not in server.output(run)

