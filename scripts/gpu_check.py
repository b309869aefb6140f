#!/usr/bin/env python3
"""End-to-end check of Flowers' GPU path on a machine with an NVIDIA GPU (see scripts/gpu-check).

It starts the real `flowers` binary with no CPU slots, runs a service pinned to a GPU with a
VRAM budget whose process allocates real CUDA memory with PyTorch, and checks, printing one
table row per fact:

  - detection: NVML found the GPU(s) (name, UUID, memory) and `flowers gpus` shows them;
  - pinning: the Run got CUDA_VISIBLE_DEVICES = the GPU's UUID and PyTorch sees exactly it;
  - accounting: the VRAM reservation beside what NVML reports the Run's process uses;
  - ledger: Flowers charges that NVML memory to the Run (its process group), and since the
    CUDA context alone exceeds the 256 MiB budget, reports it over budget with an event;
  - adoption: after `kill -9` of Flowers, the restarted Flowers adopts the Run (same pid);
  - release: after `flowers stop`, the process is gone from NVML and its memory is free.

Then it runs examples/train-and-serve end to end on the GPU (no CPU slots): a job that learns
to read digits with PyTorch beside the service that serves its promoted versions, sharing one
GPU through VRAM budgets:

  - example ready: the first promoted version answers through the gateway, on the torch backend;
  - example pinning: the service's and the job's processes got CUDA_VISIBLE_DEVICES = the GPU's
    UUID (read from /proc/PID/environ);
  - example VRAM: each Run's reservation (budget) beside what NVML says its processes use;
  - example load: GET /digits/predict from a thread pool through the gateway for
    GPU_CHECK_LOAD_SECONDS (40): no failed request, and at least one version promoted during
    the load answered afterwards (blue/green on one GPU).

The example needs the SDK (sdk/python of this tree, put on PYTHONPATH) and the digits data:
scikit-learn, or .gpu/digits.csv.gz (see scripts/gpu-check), given to it as EXAMPLE_DIGITS.

Last, when the binary is a cuda build (scripts/cuda-build), the built-in engines on the GPU
with the default models, .gpu/minilm and .gpu/smollm2 (see scripts/gpu-check):

  - engines embed: `flowers engine embed --device cuda`; the model card's pair has cosine
    0.4046 ± 1e-3, as on the CPU;
  - engines chat: `flowers engine chat --device cuda`; a greedy 64-token answer, timed.

Then video analysis on the GPU:

  - video nvdec: `flowers video scan CLIP --hwaccel cuda` (NVDEC) against the same scan in
    software, on a 1080p H.264 clip (.gpu/clip1080.mp4, or made here with ffmpeg): the same
    frames, and each one's time;
  - video cuda-ep: `flowers engine detect --device cuda` on the fixture model .gpu/v8.onnx with
    ONNX Runtime's GPU library (.gpu/ort/libonnxruntime.so*, or the onnxruntime-gpu package of
    this python3): the start line says the GPU, and an image gets the fixture's boxes.

`--only basic|example|engines|video` runs one part.

Standard library only, plus PyTorch inside the workload (skipped with a clear row if absent).
Exit status 0 when every check passed, 1 otherwise, 2 when there is no GPU to check.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(REPO, "examples", "train-and-serve")
WORKLOAD = r'''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
info = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["device_count"] = torch.cuda.device_count()
        info["device_name"] = torch.cuda.get_device_name(0)
        mib = int(os.environ.get("GPU_CHECK_MIB", "512"))
        block = torch.empty(mib * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
        block.fill_(1)
        torch.cuda.synchronize()
        info["allocated_mib"] = mib
except Exception as error:  # reported, not hidden
    info["error"] = repr(error)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

print("gpu workload ready:", json.dumps(info), flush=True)
HTTPServer(("127.0.0.1", int(os.environ["FLOWERS_PORT"])), Handler).serve_forever()
'''

rows = []
failed = False



def stop_flowers(flowers, log, work, log_name):
    """SIGTERM to a Flowers this script started (SIGKILL after 60 s), and its log copied to $OUT
    under log_name when the device tool collects files. Returns $OUT, or None."""
    if flowers.poll() is None:
        flowers.send_signal(signal.SIGTERM)
        try:
            flowers.wait(timeout=60)
        except subprocess.TimeoutExpired:
            flowers.kill()
    log.close()
    out = os.environ.get("OUT")
    if out:
        shutil.copy(os.path.join(work, "flowers.log"), os.path.join(out, log_name))
    return out

def row(check, ok, detail):
    global failed
    status = {True: "ok", False: "FAIL", None: "skip"}[ok]
    if ok is False:
        failed = True
    rows.append((check, status, detail))
    print(f"  {status:<4} {check}: {detail}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(what, probe, seconds=90):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as error:
            last = error
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last})")


def find_binary():
    candidates = [
        os.environ.get("FLOWERS_BIN"),
        os.path.join(HERE, "..", ".gpu", "flowers"),
        os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/flowers/target")), "release", "flowers"),
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return os.path.abspath(path)
    if shutil.which("cargo"):
        subprocess.run(["cargo", "build", "--release", "-p", "flowers"], cwd=os.path.join(HERE, ".."), check=True)
        return find_binary()
    sys.exit("gpu-check: no flowers binary (set FLOWERS_BIN, or build one: cargo build --release -p flowers)")


def check_ledger(run, used_mib, charged):
    """The ledger row: Flowers charged NVML's memory to the Run and reported it over budget."""
    try:
        allocation, event = wait_for("Flowers to charge NVML's memory to the run and report it over budget",
                                     charged, seconds=30)
    except TimeoutError as error:
        row("ledger", False, str(error))
        return
    charged_mib = allocation["vram_used_bytes"] // 2**20
    # Readings 2 s apart may differ a little; the ledger ignores changes under 64 MiB.
    row("ledger", abs(charged_mib - used_mib) <= 64,
        f"Flowers charges {charged_mib} MiB to {run['id']} (NVML: {used_mib} MiB); event: {event['message']}")


def check_basic(binary):
    """The GPU path with a tiny workload; returns 2 when there is no GPU to check."""
    work = tempfile.mkdtemp(prefix="flowers-gpu-check-")
    api_port, gateway_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    with open(os.path.join(work, "workload.py"), "w") as f:
        f.write(WORKLOAD)
    mib = int(os.environ.get("GPU_CHECK_MIB", "512"))
    with open(os.path.join(work, "flowers.toml"), "w") as f:
        f.write(f'''[server]
api_listen = "127.0.0.1:{api_port}"
gateway_listen = "127.0.0.1:{gateway_port}"
data_dir = "data"
[devices]
cpu_slots = 0
[services.gpu]
command = ["{sys.executable}", "-u", "workload.py"]
devices = 1
vram = "256MiB"
env = {{ GPU_CHECK_MIB = "{mib}" }}
[services.gpu.probe]
path = "/"
interval = "200ms"
start_timeout = "120s"
''')
    log = open(os.path.join(work, "flowers.log"), "ab")

    def start():
        return subprocess.Popen([binary, "up", "--config", "flowers.toml"], cwd=work, stdout=log, stderr=log)

    def cli(*args):
        out = subprocess.run([binary, "--api", api, *args], capture_output=True, text=True)
        return out.stdout

    flowers = start()
    try:
        wait_for("the control API", lambda: get(f"{api}/v1/status"))
        devices = get(f"{api}/v1/devices")
        gpus = [d for d in devices["devices"] if d["kind"] == "gpu"]
        print(f"flowers gpus: {devices['gpu_status']}", flush=True)
        if not gpus:
            row("detection", None, f"no GPU: {devices['gpu_status']}")
            return 2
        row("detection", devices["gpu_source"] == "nvml",
            "; ".join(f"{g['id']} {g['name']} {g['uuid']} {g['memory_total_bytes'] // 2**20} MiB" for g in gpus))
        service = wait_for("the GPU service to be ready",
                           lambda: (lambda s: s if s["ready_replicas"] == 1 else None)(get(f"{api}/v1/services/gpu")))
        run = service["runs"][0]
        device = next(g for g in gpus if g["id"] == run["device"])
        info = get(f"http://127.0.0.1:{run['port']}/")
        row("pinning", info.get("cuda_visible_devices") == device["uuid"],
            f"run {run['id']} on {run['device']}: CUDA_VISIBLE_DEVICES={info.get('cuda_visible_devices')}, "
            f"torch sees {info.get('device_count', '?')} device(s): {info.get('device_name', info.get('error', 'no torch'))}")
        if "allocated_mib" not in info:
            row("allocation", None, f"the workload could not allocate CUDA memory: {info.get('error', 'PyTorch without CUDA')}")
        devices = get(f"{api}/v1/devices")
        device = next(d for d in devices["devices"] if d["id"] == run["device"])
        processes = device["telemetry"]["processes"] if device.get("telemetry") else []
        mine = [p for p in processes if p.get("run") == run["id"]]
        used = sum(p["memory_used_bytes"] or 0 for p in mine) // 2**20
        row("accounting", bool(mine) or "allocated_mib" not in info,
            f"reserved {device['allocated_vram_bytes'] // 2**20} MiB (budget 256), NVML: run's processes use {used} MiB "
            f"(torch allocated {info.get('allocated_mib', 0)} MiB), device used "
            f"{(device['telemetry'] or {}).get('memory_used_bytes', 0) // 2**20} MiB")
        def charged():
            d = next(x for x in get(f"{api}/v1/devices")["devices"] if x["id"] == run["device"])
            mine = [a for a in d["allocations"] if a["run"] == run["id"]]
            events = get(f"{api}/v1/events?owner=gpu&limit=1000")
            over = [e for e in events if e["kind"] == "vram_budget_exceeded" and e.get("run") == run["id"]]
            return (mine[0], over[0]) if mine and mine[0].get("vram_used_bytes") and over else None
        if "allocated_mib" not in info:
            row("ledger", None, "no CUDA memory was allocated, so there is nothing to charge")
        else:
            check_ledger(run, used, charged)
        print(cli("gpus"), flush=True)

        flowers.send_signal(signal.SIGKILL)
        flowers.wait()
        flowers = start()
        wait_for("the control API after kill -9", lambda: get(f"{api}/v1/status"))
        again = wait_for("the adopted replica",
                         lambda: (lambda s: s if s["ready_replicas"] == 1 else None)(get(f"{api}/v1/services/gpu")))
        row("adoption", again["runs"][0]["id"] == run["id"] and again["runs"][0]["pid"] == run["pid"],
            f"after kill -9: run {again['runs'][0]['id']} pid {again['runs'][0]['pid']} (before: {run['id']} pid {run['pid']})")

        cli("stop", run["id"])
        def released():
            d = next(x for x in get(f"{api}/v1/devices")["devices"] if x["id"] == run["device"])
            pids = [p["pid"] for p in (d["telemetry"] or {}).get("processes", [])]
            return d if info.get("pid") not in pids else None
        after = wait_for("the stopped run's memory to be released", released)
        row("release", True,
            f"after stop: {run['id']}'s process left NVML's list; device used "
            f"{(after['telemetry'] or {}).get('memory_used_bytes', 0) // 2**20} MiB")
    except Exception as error:
        row("run", False, str(error))
    finally:
        stop_flowers(flowers, log, work, "flowers.log")
    return 0


def proc_env(pid, name):
    """An environment variable of a running process (Runs are this user's), or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                key, _, value = item.partition(b"=")
                if key.decode(errors="replace") == name:
                    return value.decode(errors="replace")
    except OSError:
        return None
    return None


def example_environment():
    """Flowers' environment for the example: the tree's SDK, the digits data, our python3."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    sdk = os.path.join(REPO, "sdk", "python")
    if os.path.isdir(os.path.join(sdk, "flowers")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in [sdk, env.get("PYTHONPATH")] if p)
    carried = os.path.join(REPO, ".gpu", "digits.csv.gz")
    if not env.get("EXAMPLE_DIGITS") and os.path.isfile(carried):
        env["EXAMPLE_DIGITS"] = carried
    env.pop("FLOWERS_API", None)
    return env


def send_load(url, seconds, clients=8):
    """GET url?index=… from `clients` threads for `seconds`: [(start, version or None, error)]."""
    deadline = time.monotonic() + seconds

    def client(number):
        samples, i = [], number
        while time.monotonic() < deadline:
            start = time.time()
            try:
                with urllib.request.urlopen(f"{url}?index={i % 450}", timeout=60) as response:
                    samples.append((start, json.loads(response.read())["version"], None))
            except Exception as error:  # every failure counts, whatever it is
                body = error.read().decode(errors="replace")[:200] if hasattr(error, "read") else ""
                samples.append((start, None, f"{error} {body}".strip()))
            i += clients
        return samples

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [s for part in pool.map(client, range(clients)) for s in part]


def check_example(binary):
    """examples/train-and-serve on the GPU: training beside serving, promotion under load."""
    work = tempfile.mkdtemp(prefix="flowers-gpu-example-")
    api_port, gateway_port = free_port(), free_port()
    api, gateway = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{gateway_port}"
    env = example_environment()
    if not os.path.isdir(os.path.join(REPO, "sdk", "python", "flowers")) and "PYTHONPATH" not in os.environ:
        print("example: no sdk/python in this tree; relying on the binary to give Runs the SDK", flush=True)
    log = open(os.path.join(work, "flowers.log"), "ab")
    flowers = subprocess.Popen(
        [binary, "up", "--config", os.path.join(EXAMPLE, "flowers.toml"), "--cpu-slots", "0",
         "--api-listen", f"127.0.0.1:{api_port}", "--gateway-listen", f"127.0.0.1:{gateway_port}",
         "--data-dir", os.path.join(work, "data")],
        cwd=work, env=env, stdout=log, stderr=log)
    try:
        wait_for("the control API", lambda: get(f"{api}/v1/status"))
        gpus = {d["id"]: d for d in get(f"{api}/v1/devices")["devices"] if d["kind"] == "gpu"}
        if not gpus:
            row("example", None, f"no GPU: {get(f'{api}/v1/devices')['gpu_status']}")
            return 2

        def served():
            service = get(f"{api}/v1/services/digits")
            if service["state"] == "crash_loop":
                raise SystemExit(f"the example's service is in a crash loop: {service['reason']}")
            job = get(f"{api}/v1/jobs/train-digits")
            if job["state"] == "failed":
                raise SystemExit(f"the example's job failed: {job['reason']} (log: {work}/data/runs/)")
            return get(f"{gateway}/digits", timeout=30) if service["ready_replicas"] >= 1 else None
        try:
            info = wait_for("the example's first version to be served", served, seconds=240)
        except SystemExit as error:
            row("example ready", False, str(error))
            return 1
        row("example ready", info.get("backend") == "torch",
            f"version {info['version']} answers through the gateway, backend {info.get('backend')} "
            f"(trained with {info.get('trained_by')})")

        job = wait_for("the example's job to run",
                       lambda: (lambda j: j if j["last_run"] and j["last_run"]["state"] == "running" else None)(
                           get(f"{api}/v1/jobs/train-digits")), seconds=60)
        service = get(f"{api}/v1/services/digits")
        runs = [r for r in service["runs"] if r["state"] == "ready"][:1] + [job["last_run"]]
        pins = []
        pinned = True
        for run in runs:
            device = gpus.get(run["device"])
            visible = proc_env(run["child_pid"], "CUDA_VISIBLE_DEVICES")
            ok = device is not None and visible == device["uuid"]
            pinned = pinned and ok
            pins.append(f"{run['id']} on {run['device']}: CUDA_VISIBLE_DEVICES={visible}")
        row("example pinning", pinned, "; ".join(pins))

        def charged():
            devices = get(f"{api}/v1/devices")["devices"]
            allocations = {a["run"]: a for d in devices for a in d["allocations"]}
            mine = [allocations.get(r["id"]) for r in runs]
            return mine if all(a and a.get("vram_used_bytes") for a in mine) else None
        try:
            allocations = wait_for("NVML readings of the example's Runs", charged, seconds=30)
            row("example VRAM", all(a["vram_bytes"] for a in allocations),
                "; ".join(f"{a['run']} ({a['owner']}): budget {(a['vram_bytes'] or 0) // 2**20} MiB, "
                          f"NVML {a['vram_used_bytes'] // 2**20} MiB" for a in allocations))
        except TimeoutError:
            devices = get(f"{api}/v1/devices")["devices"]
            shown = [f"{a['run']}: budget {(a['vram_bytes'] or 0) // 2**20} MiB, NVML "
                     f"{'-' if a.get('vram_used_bytes') is None else a['vram_used_bytes'] // 2**20} MiB"
                     for d in devices for a in d["allocations"]]
            row("example VRAM", False if info.get("backend") == "torch" else None,
                "no NVML reading of every Run's memory: " + "; ".join(shown))
        print(cli_output(binary, api, "gpus"), flush=True)

        seconds = float(os.environ.get("GPU_CHECK_LOAD_SECONDS", "40"))
        start = time.time()
        samples = send_load(f"{gateway}/digits/predict", seconds)
        end = time.time()
        model = get(f"{api}/v1/models/digits")
        accuracy = {v["version"]: v["metrics"].get("accuracy") for v in model["versions"]}
        promoted = sorted((p["time_ms"] / 1000, p["version"]) for p in model["promotions"]
                          if start <= p["time_ms"] / 1000 <= end)
        served_after = [v for t, v in promoted if any(s[1] == v and s[0] >= t for s in samples)]
        failures = [s for s in samples if s[2] is not None]
        answered = {}
        for _, version, _ in samples:
            if version is not None:
                answered[version] = answered.get(version, 0) + 1
        climb = " → ".join(f"v{v} {accuracy.get(v, 0):.3f}" for _, v in promoted)
        detail = (f"{len(samples)} requests in {end - start:.0f}s, {len(failures)} failed; promoted during "
                  f"the load: {climb or 'none'} (answered afterwards: {served_after}); answers by version: "
                  f"{dict(sorted(answered.items()))}")
        if failures:
            detail += f"; first failure: {failures[0][2]}"
        row("example load", bool(samples) and not failures and bool(served_after), detail)
        return 0
    except Exception as error:
        row("example", False, f"{type(error).__name__}: {error}")
        return 1
    finally:
        out = stop_flowers(flowers, log, work, "flowers-example.log")
        if out:
            runs = os.path.join(work, "data", "runs")
            for run in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
                source = os.path.join(runs, run, "output.log")
                if os.path.isfile(source):
                    shutil.copy(source, os.path.join(out, f"example-{run}.log"))


CARD_PAIR = ["This is an example sentence", "Each sentence is converted"]


def missing_libraries(binary, env):
    """The shared libraries `ldd` cannot find for the binary (a cuda build links CUDA's)."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env).stdout
    except OSError:
        return []
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def post(url, body, timeout=300):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


# GPU_CHECK_ENGINES_DEVICE=cpu runs the engines part's own logic on a machine without a GPU.
ENGINES_DEVICE = os.environ.get("GPU_CHECK_ENGINES_DEVICE", "cuda")


def start_engine(binary, kind, model, env, work):
    """`flowers engine KIND --device cuda` on a free port; (process, url, seconds to /healthz)."""
    port = free_port()
    log = open(os.path.join(work, f"engine-{kind}.log"), "ab")
    started = time.monotonic()
    engine = subprocess.Popen([binary, "engine", kind, "--model", model, "--device", ENGINES_DEVICE,
                               "--listen", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if engine.poll() is not None:
            with open(log.name, errors="replace") as f:
                text = f.read()
            errors = [line for line in text.splitlines() if line.startswith("error:")]
            raise SystemExit(f"flowers engine {kind} exited {engine.returncode}: "
                             f"{errors[-1] if errors else text[-600:].strip()}")
        with urllib.request.urlopen(f"{url}/healthz", timeout=2):
            return True
    wait_for(f"flowers engine {kind}", healthy, seconds=300)
    return engine, url, time.monotonic() - started


def check_engines(binary):
    """The built-in engines on the GPU, when the binary is a cuda build."""
    with open(binary, "rb") as f:
        cuda_build = b"libcuda.so.1\0" in f.read()
    if not cuda_build:
        row("engines", None, f"skipped: {binary} is not a cuda build (it does not link libcuda.so.1); "
            "build one with scripts/cuda-build and carry it as .gpu/flowers")
        return 0
    models = {"embed": os.path.join(REPO, ".gpu", "minilm"), "chat": os.path.join(REPO, ".gpu", "smollm2")}
    absent = [path for path in models.values() if not os.path.exists(path)]
    if absent:
        row("engines", None, f"skipped: no {', '.join(absent)} (see scripts/gpu-check for preparing them)")
        return 0
    env = dict(os.environ)
    carried = os.path.join(REPO, ".gpu", "lib")
    if os.path.isdir(carried):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [carried, env.get("LD_LIBRARY_PATH")] if p)
    missing = missing_libraries(binary, env)
    if missing:
        row("engines", False, f"the cuda build cannot start here: no {', '.join(missing)} (the CUDA runtime "
            "of the toolkit it was built with; put them in .gpu/lib)")
        return 1
    work = tempfile.mkdtemp(prefix="flowers-gpu-engines-")
    engine = None
    try:
        engine, url, seconds = start_engine(binary, "embed", models["embed"], env, work)
        started = time.monotonic()
        data = post(f"{url}/v1/embeddings", {"model": "minilm", "input": CARD_PAIR})["data"]
        took = time.monotonic() - started
        a, b = data[0]["embedding"], data[1]["embedding"]
        similarity = sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
        row("engines embed", abs(similarity - 0.4046) <= 1e-3,
            f"--device {ENGINES_DEVICE}: the card pair's cosine is {similarity:.4f} (CPU: 0.4046); ready in {seconds:.1f}s, "
            f"first request {took * 1000:.0f} ms")
        engine.terminate()
        engine.wait(timeout=60)

        engine, url, seconds = start_engine(binary, "chat", models["chat"], env, work)
        ask = {"model": "smollm2", "temperature": 0,
               "messages": [{"role": "user", "content": "Write a long story about a gardener and her flowers."}]}
        started = time.monotonic()
        post(f"{url}/v1/chat/completions", {**ask, "max_tokens": 4})
        warm = time.monotonic() - started
        started = time.monotonic()
        answer = post(f"{url}/v1/chat/completions", {**ask, "max_tokens": 64})
        took = time.monotonic() - started
        tokens = answer["usage"]["completion_tokens"]
        text = answer["choices"][0]["message"]["content"]
        row("engines chat", tokens > 0,
            f"--device {ENGINES_DEVICE}: a greedy answer of {tokens} tokens in {took:.2f}s ({tokens / took:.1f} tokens/s; "
            f"ready in {seconds:.1f}s, a 4-token warm-up {warm:.2f}s): {text[:60]!r}…")
        return 0
    except (Exception, SystemExit) as error:
        row("engines", False, f"{type(error).__name__}: {error}")
        return 1
    finally:
        if engine and engine.poll() is None:
            engine.terminate()
            engine.wait(timeout=60)
        out = os.environ.get("OUT")
        for name in os.listdir(work) if out else []:
            shutil.copy(os.path.join(work, name), os.path.join(out, name))


def check_video(binary):
    """NVDEC through `flowers video scan`, and the detector on ONNX Runtime's CUDA provider."""
    gpu = os.path.join(REPO, ".gpu")
    work = tempfile.mkdtemp(prefix="flowers-gpu-video-")
    failures = 0
    ffmpeg = shutil.which("ffmpeg")
    clip = os.path.join(gpu, "clip1080.mp4")
    if not ffmpeg:
        row("video nvdec", None, "skipped: no ffmpeg on this machine (Flowers decodes with ffmpeg processes)")
    else:
        if not os.path.exists(clip):
            clip = os.path.join(work, "clip1080.mp4")
            subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                            "testsrc2=s=1920x1080:r=25:d=20", "-c:v", "libx264", "-preset", "veryfast", clip],
                           check=True)
        scans = {}
        for mode in ("none", "cuda"):
            started = time.monotonic()
            done = subprocess.run([binary, "--json", "video", "scan", clip, "--hwaccel", mode,
                                   "--width", "1920"], capture_output=True, text=True)
            took = time.monotonic() - started
            summary = None
            for line in done.stdout.splitlines():
                value = json.loads(line)
                if "summary" in value:
                    summary = value["summary"]
            scans[mode] = (done.returncode, summary, took, done.stderr.strip()[-300:])
        (sw_code, sw, sw_took, sw_err), (hw_code, hw, hw_took, hw_err) = scans["none"], scans["cuda"]
        ok = sw_code == 0 and hw_code == 0 and sw and hw and sw["frames"] == hw["frames"]
        if ok:
            detail = (f"{hw['frames']} frames of {hw['width']}×{hw['height']} at 5 fps: NVDEC {hw_took:.2f}s, "
                      f"software {sw_took:.2f}s (whole scans, decoding the 25 fps clip)")
        else:
            detail = f"software exit {sw_code} ({sw_err or sw}); NVDEC exit {hw_code}: {hw_err or hw}"
        row("video nvdec", ok, detail)
        failures += 0 if ok else 1

    model = os.path.join(gpu, "v8.onnx")
    libraries = sorted(glob.glob(os.path.join(gpu, "ort", "libonnxruntime.so*")), key=len)
    if not libraries:
        try:
            import onnxruntime  # noqa: F401  (the onnxruntime-gpu package, if this python3 has it)
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
                libraries = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")), key=len)
        except ImportError:
            pass
    if not os.path.exists(model):
        row("video cuda-ep", None, "skipped: no .gpu/v8.onnx (see scripts/gpu-check for preparing it)")
    elif not libraries:
        row("video cuda-ep", None, "skipped: no ONNX Runtime with the CUDA provider here (.gpu/ort or the "
            "onnxruntime-gpu package)")
    else:
        port = free_port()
        log_path = os.path.join(work, "detect.log")
        with open(log_path, "ab") as log:
            engine = subprocess.Popen([binary, "engine", "detect", "--model", model, "--ort-lib", libraries[-1],
                                       "--device", "cuda", "--listen", f"127.0.0.1:{port}"],
                                      stdout=log, stderr=log)
        try:
            def healthy():
                if engine.poll() is not None:
                    raise SystemExit(f"flowers engine detect exited {engine.returncode}")
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    return True
            wait_for("flowers engine detect", healthy, seconds=120)
            with open(log_path, errors="replace") as f:
                started_line = next((line.strip() for line in f if line.startswith("detect engine:")), "")
            image = bytes([114]) * (1280 * 720 * 3)
            body = json.dumps([{"width": 1280, "height": 720}]).encode() + b"\n" + image
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/detect", body)
            started = time.monotonic()
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            took = time.monotonic() - started
            labels = [found["label"] for found in answer["results"][0]]
            ok = "the GPU (CUDA)" in started_line and "person" in labels
            row("video cuda-ep", ok, f"{started_line!r}; an image in {took * 1000:.0f} ms: {labels}")
            failures += 0 if ok else 1
        except (Exception, SystemExit) as error:
            row("video cuda-ep", False, f"{type(error).__name__}: {error}")
            failures += 1
        finally:
            engine.terminate()
            engine.wait(timeout=60)
    out = os.environ.get("OUT")
    for name in os.listdir(work) if out else []:
        if name.endswith(".log"):
            shutil.copy(os.path.join(work, name), os.path.join(out, name))
    return 1 if failures else 0


def cli_output(binary, api, *args):
    return subprocess.run([binary, "--api", api, *args], capture_output=True, text=True).stdout


def main():
    parser = argparse.ArgumentParser(description="Flowers' GPU path end to end (see scripts/gpu-check)")
    parser.add_argument("--only", choices=("basic", "example", "engines", "video"),
                        help="run one part of the check")
    args = parser.parse_args()
    binary = find_binary()
    status = 0
    if args.only in (None, "basic"):
        status = check_basic(binary)
    if status != 2 and args.only in (None, "example"):
        status = check_example(binary)
    if status != 2 and args.only in (None, "engines"):
        status = check_engines(binary)
    if status != 2 and args.only in (None, "video"):
        status = check_video(binary)

    print("\n| check | result | detail |\n| --- | --- | --- |")
    for check, result, detail in rows:
        print(f"| {check} | {result} | {detail} |")
    if status == 2 and not failed:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
