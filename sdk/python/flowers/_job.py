"""Helpers for a training job run by Flowers: resume, checkpoint, report progress, stop cleanly.

A job's loop, in ten lines::

    import json, flowers

    flowers.should_stop()                                 # install the SIGTERM handler early
    last = flowers.resume()                               # the last checkpoint, or None
    state = json.loads((last / "state.json").read_text()) if last else {"step": 0}
    while state["step"] < 1000 and not flowers.should_stop():
        state["step"] += 1                                # ... one step of training ...
        flowers.report(step=state["step"], total=1000, metrics={"loss": 0.1})
        if state["step"] % 100 == 0:
            flowers.checkpoint({"state.json": json.dumps(state)}, metrics={"eval_loss": 0.1})
    flowers.checkpoint({"state.json": json.dumps(state)})  # preempted or done: save and return
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import pathlib
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from . import _control
from ._errors import ControlAPIError, FlowersError, NotUnderFlowers, Unreachable

PathLike = Union[str, "os.PathLike[str]"]
FileContent = Union[bytes, bytearray, memoryview, str, Iterable[bytes]]

#: Where ``checkpoint(dict)`` writes, under ``$FLOWERS_DATA_DIR``.
CHECKPOINTS_DIR = ".checkpoints"
#: ``report()`` sends at most one update per this many seconds; the latest values win.
REPORT_INTERVAL = 1.0
#: Flowers keeps at most this many metrics in a Run's progress.
MAX_REPORTED_METRICS = 64

_TEMP_NAME = re.compile(r"^tmp-(\d+)-(\d+)$")


@dataclass(frozen=True)
class Version:
    """A version that :func:`checkpoint` registered.

    ``model``: the model's name; ``version``: its number; ``promoted``: whether the model's
    policy promoted it at once; ``note``: why it was or was not promoted; ``path``: the
    version's own immutable directory, ``DATA_DIR/models/MODEL/VERSION``; ``digest`` and
    ``metrics`` as Flowers recorded them.
    """

    model: str
    version: int
    promoted: bool
    note: str
    path: pathlib.Path
    digest: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# resume


def resume() -> Optional[pathlib.Path]:
    """The directory of the job's last checkpoint, to continue from, or ``None`` for a fresh
    start (also outside Flowers).

    Flowers sets ``FLOWERS_RESUME_FROM`` to the newest version this job registered whose files
    still exist, when the job names a model and has registered one. The directory is the
    version itself (read-only by convention: never write into it; make a new checkpoint).

    Raises :class:`FlowersError` when ``FLOWERS_RESUME_FROM`` names a directory that does not
    exist.
    """
    raw = os.environ.get("FLOWERS_RESUME_FROM")
    if not raw:
        return None
    path = pathlib.Path(raw)
    if not path.exists():
        raise FlowersError(
            f"FLOWERS_RESUME_FROM is {raw!r}, which does not exist: the version's files were "
            "deleted after this Run started. Start the job again (`flowers run JOB`) to resume "
            "from its newest version that still has files."
        )
    return path


# ---------------------------------------------------------------------------------------------
# checkpoint


def _metrics(metrics: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a dict of name -> number, got {type(metrics).__name__}"
        )
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be str, got {key!r} ({type(key).__name__})")
        if not key:
            raise ValueError("a metric name must not be empty")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # numpy and torch scalars convert with float(); anything else is a mistake.
            if hasattr(value, "__float__") and not isinstance(value, (str, bytes, bool)):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"metric {key!r} must be a number, got {value!r}"
                    ) from None
            else:
                raise TypeError(
                    f"metric {key!r} must be a number, got {value!r} ({type(value).__name__})"
                )
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {key!r} must be a finite number, got {number!r}")
        out[key] = number
    return out


def _relative_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"file names must be str, got {name!r} ({type(name).__name__})")
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"file name {name!r} must be a relative path like 'weights.bin' or 'sub/x.json', "
            "without '.', '..' or empty parts"
        )
    if parts == ["manifest.json"]:
        raise ValueError(
            "'manifest.json' at the top of a checkpoint is Flowers' own; name the file "
            "differently or put it in a subdirectory"
        )
    return "/".join(parts)


def _chunks(name: str, content: Any) -> Iterable[bytes]:
    if isinstance(content, str):
        return [content.encode("utf-8")]
    if isinstance(content, (bytes, bytearray, memoryview)):
        return [bytes(content)] if not isinstance(content, bytes) else [content]
    if isinstance(content, (Mapping, set)) or not hasattr(content, "__iter__"):
        raise TypeError(
            f"the content of {name!r} must be bytes, str or an iterable of bytes chunks, got "
            f"{type(content).__name__}; serialise it first (json.dumps, torch.save to a "
            "BytesIO, ...)"
        )
    return content


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: pathlib.Path) -> None:
    """Removes temporary checkpoint directories of processes that are gone (a kill -9 during a
    write): they were never registered."""
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


_counter = itertools.count()


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(files: Mapping[Any, Any], data_dir: pathlib.Path) -> pathlib.Path:
    names = {}
    for name, content in files.items():
        relative = _relative_name(name)
        if relative in names:
            raise ValueError(f"file name {name!r} appears twice")
        names[relative] = content
    if not names:
        raise ValueError("a checkpoint needs at least one file; the dict is empty")
    for relative in names:
        for other in names:
            if other.startswith(relative + "/"):
                raise ValueError(f"{relative!r} cannot be both a file and the directory of {other!r}")

    root = data_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    while True:
        directory = root / f"tmp-{os.getpid()}-{next(_counter)}"
        try:
            directory.mkdir()
            break
        except FileExistsError:
            continue
    try:
        dirs = {directory}
        for relative, content in names.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(target.parent)
            with open(target, "xb") as out:
                for chunk in _chunks(relative, content):
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise TypeError(
                            f"the content of {relative!r} yielded a {type(chunk).__name__}; "
                            "an iterable must yield bytes"
                        )
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        for each in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(each)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def checkpoint(
    path_or_files: Union[PathLike, Mapping[str, FileContent]],
    metrics: Optional[Mapping[str, float]] = None,
) -> Version:
    """Registers a checkpoint as a new version of the job's model and returns it.

    ``path_or_files`` is either

    * a ``dict`` ``{relative_name: content}``, content being ``bytes``, ``str`` (written as
      UTF-8) or an iterable of ``bytes`` chunks (for files too big to hold in memory). The SDK
      writes the files into a fresh temporary directory under
      ``$FLOWERS_DATA_DIR/.checkpoints/``, syncs them, registers it, and deletes it once
      Flowers answered (Flowers keeps its own copy). A process killed mid-write leaves only an
      unregistered temporary directory, removed by the next checkpoint; or
    * a ``str``/``os.PathLike``: a file or directory you wrote completely yourself; it is
      registered as it is (Flowers copies it; the SDK does not touch it).

    ``metrics``: finite numbers by name, e.g. ``{"eval_loss": 0.31}``; a model whose policy is
    ``promote = { metric = "eval_loss", mode = "min" }`` promotes the version at once when it
    beats the promoted one (``Version.promoted`` and ``Version.note`` say so).

    Raises :class:`NotUnderFlowers` (not run by Flowers, or the job has no ``model = "..."``),
    :class:`ControlAPIError` (Flowers refused it, e.g. this Run is not the job's live Run),
    :class:`Unreachable` (no answer for 30 s), ``TypeError``/``ValueError`` for bad arguments.
    """
    clean_metrics = _metrics(metrics)
    if isinstance(path_or_files, Mapping):
        files: Optional[Mapping[Any, Any]] = path_or_files
        source: Optional[pathlib.Path] = None
    elif isinstance(path_or_files, (str, os.PathLike)):
        files = None
        raw = os.fspath(path_or_files)
        if not isinstance(raw, str):
            raise TypeError("a checkpoint path must be a str or a str PathLike, not bytes")
        source = pathlib.Path(raw).absolute()
        if not source.exists():
            raise ValueError(f"checkpoint path {str(source)!r} does not exist")
    else:
        raise TypeError(
            "checkpoint() takes a path (str or os.PathLike) to a file or directory, or a dict "
            f"{{relative_name: bytes | str}}; got {type(path_or_files).__name__}"
        )

    _control.control_url()
    model = _control.env(
        "FLOWERS_MODEL",
        'this job names no model: add model = "NAME" to its [jobs.NAME] table in flowers.toml '
        "(or give --model to flowers train)",
    )
    run = _control.env("FLOWERS_RUN_ID")
    temporary: Optional[pathlib.Path] = None
    if files is not None:
        data_dir = pathlib.Path(_control.env("FLOWERS_DATA_DIR"))
        temporary = _write_files(files, data_dir)
        source = temporary
    assert source is not None
    try:
        answer = _control.call(
            "POST",
            "/v1/models/%s/versions" % model,
            {"path": str(source), "metrics": clean_metrics, "run": run},
            # Flowers copies and syncs the files before it answers: big checkpoints take time.
            timeout=3600.0,
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    version = answer["version"]
    return Version(
        model=str(version["model"]),
        version=int(version["version"]),
        promoted=bool(answer.get("promoted", False)),
        note=str(answer.get("note", "")),
        path=pathlib.Path(version["path"]),
        digest=str(version.get("digest", "")),
        metrics=dict(version.get("metrics") or {}),
    )


# ---------------------------------------------------------------------------------------------
# report


def _count(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "__index__") and not isinstance(value, bool):
            value = value.__index__()
        else:
            raise TypeError(f"{name} must be an int or None, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return int(value)


class _Progress:
    """The latest progress, sent at most once per REPORT_INTERVAL; the last one at exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: Optional[Dict[str, Any]] = None
        self.last_sent = -math.inf
        self.timer: Optional[threading.Timer] = None
        self.warned = False
        self.deferred: Optional[ControlAPIError] = None
        self.atexit_installed = False

    def offer(self, body: Dict[str, Any]) -> None:
        with self.lock:
            deferred, self.deferred = self.deferred, None
            self.pending = body
            if not self.atexit_installed:
                atexit.register(self.flush_quietly)
                self.atexit_installed = True
            now = time.monotonic()
            due = now - self.last_sent >= REPORT_INTERVAL
            if due:
                self.pending = None
                self.last_sent = now
            elif self.timer is None:
                self.timer = threading.Timer(self.last_sent + REPORT_INTERVAL - now, self._tick)
                self.timer.daemon = True
                self.timer.start()
        if deferred is not None:
            raise deferred
        if due:
            self.send(body)

    def _tick(self) -> None:
        with self.lock:
            self.timer = None
            body, self.pending = self.pending, None
            if body is not None:
                self.last_sent = time.monotonic()
        if body is not None:
            try:
                self.send(body)
            except ControlAPIError as error:
                with self.lock:
                    self.deferred = error

    def flush_quietly(self) -> None:
        with self.lock:
            body, self.pending = self.pending, None
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        if body is not None:
            try:
                self.send(body)
            except FlowersError as error:
                print(f"flowers: the last progress report was not sent: {error}", file=sys.stderr)

    def send(self, body: Dict[str, Any]) -> None:
        try:
            run = _control.env("FLOWERS_RUN_ID")
            _control.call("POST", "/v1/runs/%s/progress" % run, body, timeout=5.0, retry=0)
        except (Unreachable, ControlAPIError) as error:
            older_flowers = (
                isinstance(error, ControlAPIError)
                and error.status == 404
                and error.message.startswith("no such endpoint")
            )
            if isinstance(error, ControlAPIError) and error.status < 500 and not older_flowers:
                raise
            if not self.warned:
                self.warned = True
                print(
                    f"flowers: progress not reported (training goes on; further failures are "
                    f"not shown): {error}",
                    file=sys.stderr,
                    flush=True,
                )


_progress = _Progress()


def report(
    step: Optional[int] = None,
    total: Optional[int] = None,
    metrics: Optional[Mapping[str, float]] = None,
) -> None:
    """Reports progress, shown by ``flowers ps`` and in ``GET /v1/runs/RUN`` as ``progress``.

    ``step`` and ``total`` are non-negative ints (``total >= step``), ``metrics`` finite numbers
    by name. Each call gives the whole picture: the latest call wins. Cheap to call every step:
    at most one update a second goes to Flowers, the last one when the process exits or when
    :func:`should_stop` turns true.

    Progress is best effort: when Flowers does not answer, one warning goes to stderr and
    training goes on. A refusal (``ControlAPIError``: unknown or ended Run) is raised, possibly
    by the next call when it came from a delayed update. Raises :class:`NotUnderFlowers`
    outside Flowers, ``TypeError``/``ValueError`` for bad arguments.
    """
    step_value = _count("step", step)
    total_value = _count("total", total)
    if step_value is not None and total_value is not None and total_value < step_value:
        raise ValueError(f"total ({total_value}) must be at least step ({step_value})")
    clean = _metrics(metrics)
    if len(clean) > MAX_REPORTED_METRICS:
        raise ValueError(
            f"{len(clean)} metrics reported; Flowers keeps at most {MAX_REPORTED_METRICS}"
        )
    for name in clean:
        if len(name.encode("utf-8")) > 64 or not name.isprintable():
            raise ValueError(f"metric name {name!r} must be 1 to 64 printable characters")
    body = {"step": step_value, "total": total_value, "metrics": clean}
    _control.control_url()
    _control.env("FLOWERS_RUN_ID")
    _progress.offer(body)


# ---------------------------------------------------------------------------------------------
# should_stop

_stop = threading.Event()
_handlers_installed = False
_flushed_on_stop = False


def _on_signal(signum: int, frame: Any) -> None:
    _stop.set()
    if signum == signal.SIGINT:
        # A second Ctrl-C interrupts at once, as people expect at a terminal.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def should_stop() -> bool:
    """Whether the job should checkpoint and return now: Flowers sent SIGTERM (preemption to
    make room for a service, ``flowers stop``, Flowers shutting down) or SIGINT (Ctrl-C).

    Call it once early (the first call installs the SIGTERM and SIGINT handlers, from the main
    thread) and then in the loop; when it turns true, write a checkpoint and return. Flowers
    waits the job's ``stop_grace`` (30 s by default) before SIGKILL; the job starts again later
    with ``resume()`` pointing at that checkpoint. Works outside Flowers too.
    """
    global _handlers_installed, _flushed_on_stop
    if not _handlers_installed:
        if threading.current_thread() is not threading.main_thread():
            raise FlowersError(
                "should_stop() must be called first from the main thread (Python installs "
                "signal handlers only there); call it once at the start of the job"
            )
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        _handlers_installed = True
    stopping = _stop.is_set()
    if stopping and not _flushed_on_stop:
        _flushed_on_stop = True
        _progress.flush_quietly()
    return stopping


__all__ = ["Version", "checkpoint", "report", "resume", "should_stop"]
