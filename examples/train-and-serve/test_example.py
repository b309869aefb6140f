"""Tests of the train-and-serve example: the learning code, the service, and journey J2 on CPU.

    python -m pytest examples/train-and-serve

Needs NumPy and scikit-learn (or EXAMPLE_DIGITS), the Python SDK (sdk/python of this tree, or
on PYTHONPATH) and the release binary (FLOWERS_BIN, else $CARGO_TARGET_DIR/release/flowers,
else target/release/flowers). PyTorch is optional: its test is skipped without it.
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import digits  # noqa: E402


def sdk_path():
    """PYTHONPATH for Runs and subprocesses: the tree's SDK first, then what is already set."""
    parts = [str(REPO / "sdk" / "python")] if (REPO / "sdk" / "python" / "flowers").is_dir() else []
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def sdk_available():
    probe = subprocess.run([sys.executable, "-c", "import flowers; flowers.Service"],
                           env={**os.environ, "PYTHONPATH": sdk_path()}, capture_output=True)
    return probe.returncode == 0


def flowers_binary():
    candidates = [os.environ.get("FLOWERS_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "flowers"))
    candidates.append(str(REPO / "target" / "release" / "flowers"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("no flowers binary: set FLOWERS_BIN or build one (cargo build --release -p flowers)")


@pytest.fixture(scope="module")
def data():
    return digits.split(*digits.load_data())


def train(epochs, data, backend="numpy"):
    train_x, train_y, validation_x, validation_y = data
    model = digits.make_model(digits.initial_weights(), backend)
    accuracies = []
    for epoch in range(1, epochs + 1):
        digits.train_epoch(model, train_x, train_y, epoch)
        accuracies.append(digits.evaluate(model, validation_x, validation_y)[0])
    return model, accuracies


def test_a_few_epochs_learn_to_read_digits(data):
    model, accuracies = train(12, data)
    assert accuracies[0] < 0.6, f"the first epoch should leave room to improve: {accuracies}"
    assert accuracies[-1] > 0.8, accuracies
    improving = sum(1 for a, b in zip([0.0] + accuracies, accuracies) if b > a)
    assert improving >= 8, f"expected 8+ improving epochs: {accuracies}"


def test_saved_weights_predict_the_same_after_loading(data, tmp_path):
    model, _ = train(3, data)
    path = tmp_path / "weights.npz"
    path.write_bytes(digits.save(model.numpy_weights(), {"epoch": 3, "best_accuracy": 0.5, "backend": "numpy"}))
    weights, state = digits.load(path)
    assert state == {"epoch": 3, "best_accuracy": 0.5, "backend": "numpy"}
    validation_x = data[2]
    again = digits.NumpyModel(weights)
    assert np.array_equal(again.probabilities(validation_x), model.probabilities(validation_x))


def test_torch_and_numpy_predict_the_same_from_the_same_weights(data, tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the torch backend is not checked here")
    model, _ = train(5, data)
    path = tmp_path / "weights.npz"
    path.write_bytes(digits.save(model.numpy_weights(), {"epoch": 5}))
    weights, _ = digits.load(path)
    validation_x = data[2]
    with_numpy = digits.NumpyModel(weights).probabilities(validation_x)
    with_torch = digits.TorchModel(weights).probabilities(validation_x)
    assert np.array_equal(with_numpy.argmax(axis=1), with_torch.argmax(axis=1))
    assert np.allclose(with_numpy, with_torch, atol=1e-4), torch.__version__
    # A torch-trained epoch gives weights NumPy serves, and the same accuracy within rounding.
    torch_model = digits.TorchModel(digits.initial_weights())
    digits.train_epoch(torch_model, data[0], data[1], 1)
    numpy_model = digits.NumpyModel(digits.initial_weights())
    digits.train_epoch(numpy_model, data[0], data[1], 1)
    assert np.allclose(torch_model.numpy_weights()["w2"], numpy_model.numpy_weights()["w2"], atol=1e-3)


def test_the_data_comes_from_a_copy_of_the_csv_without_scikit_learn(data, tmp_path, monkeypatch):
    pixels, labels = digits.load_data()
    copy = tmp_path / "digits.csv.gz"
    with gzip.open(copy, "wt") as f:
        for row, label in zip(pixels.astype(int), labels):
            f.write(",".join(map(str, row)) + f",{label}\n")
    monkeypatch.setenv("EXAMPLE_DIGITS", str(copy))
    again_pixels, again_labels = digits.load_data()
    assert np.array_equal(again_pixels, pixels) and np.array_equal(again_labels, labels)
    monkeypatch.setenv("EXAMPLE_DIGITS", str(tmp_path / "missing.csv.gz"))
    with pytest.raises(digits.DataUnavailable, match="EXAMPLE_DIGITS=.*no such file"):
        digits.load_data()


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("EXAMPLE_BACKEND", "numpy")
    assert digits.choose_backend() == "numpy"
    monkeypatch.setenv("EXAMPLE_BACKEND", "tpu")
    with pytest.raises(ValueError, match="expected torch, numpy or auto"):
        digits.choose_backend()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def service(data, tmp_path_factory):
    """serve.py on its own (as Flowers would start it), serving version 7 of trained weights."""
    if not sdk_available():
        pytest.skip("the Python SDK (sdk/python) is not importable")
    model, _ = train(12, data)
    version = tmp_path_factory.mktemp("models") / "digits" / "7"
    version.mkdir(parents=True)
    (version / "weights.npz").write_bytes(digits.save(model.numpy_weights(), {"epoch": 12, "backend": "numpy"}))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": sdk_path(), "FLOWERS_PORT": str(port), "FLOWERS_MODEL": "digits",
           "FLOWERS_MODEL_VERSION": "7", "FLOWERS_MODEL_PATH": str(version), "FLOWERS_ROUTE_PREFIXES": "/digits",
           "EXAMPLE_BACKEND": "numpy"}
    process = subprocess.Popen([sys.executable, str(HERE / "serve.py")], cwd=HERE, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if call(f"{base}/healthz")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"serve.py did not become ready:\n{process.stdout.read().decode()}")
        time.sleep(0.05)
    yield base, model
    process.terminate()
    process.wait(timeout=30)


def test_the_service_classifies_validation_images_and_posted_pixels(service, data):
    base, model = service
    _, _, validation_x, validation_y = data
    status, answer = call(f"{base}/digits/predict?index=7")
    assert status == 200, answer
    assert answer["version"] == 7 and answer["index"] == 7 and answer["expected"] == int(validation_y[7])
    assert answer["label"] == int(model.probabilities(validation_x[7:8]).argmax())
    assert len(answer["probabilities"]) == 10
    status, answer = call(f"{base}/digits/predict", {"pixels": validation_x[7].tolist()})
    assert status == 200, answer
    assert answer["version"] == 7 and answer["label"] == int(model.probabilities(validation_x[7:8]).argmax())
    status, answer = call(f"{base}/digits")
    assert status == 200 and answer["version"] == 7 and answer["backend"] == "numpy", answer


@pytest.mark.parametrize("query, body, message", [
    ("", None, "give ?index=N"),
    ("?index=seven", None, "index: expected an integer"),
    ("?index=100000", None, "index: expected an integer 0..449, got 100000"),
    ("?index=-1", None, "got -1"),
    ("", {"pixels": [1] * 63}, "expected a list of 64 numbers"),
    ("", {"pixels": ["a"] + [0] * 63}, "pixels[0]: expected a number 0..16, got 'a'"),
    ("", {"pixels": [0] * 63 + [17]}, "pixels[63]: expected a number 0..16, got 17"),
    ("", {"pixels": [True] * 64}, "pixels[0]"),
    ("", {"image": []}, 'expected a JSON object {"pixels"'),
    ("", [1, 2], 'expected a JSON object {"pixels"'),
])
def test_bad_input_gets_400_with_a_clear_message(service, query, body, message):
    base, _ = service
    status, answer = call(f"{base}/digits/predict{query}", body)
    assert status == 400, answer
    assert message in json.dumps(answer["error"] if "error" in answer else answer).replace('\\"', '"'), answer


def test_bad_json_gets_400(service):
    base, _ = service
    status, answer = call(f"{base}/digits/predict", b"{not json")
    assert status == 400, answer


def test_the_example_trains_beside_serving_with_no_failed_request(tmp_path):
    """Journey J2 on two CPU slots: the availability benchmark pointed at the example."""
    if not sdk_available():
        pytest.skip("the Python SDK (sdk/python) is not importable")
    env = {
        **os.environ,
        # Runs start `python3`: the one running these tests, with NumPy.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "PYTHONPATH": sdk_path(),
        "EXAMPLE_EPOCH_SECONDS": "1.5",
        "TMPDIR": str(tmp_path),
    }
    env.pop("FLOWERS_API", None)
    command = [flowers_binary(), "bench", "availability", "--config", str(HERE / "flowers.toml"),
               "--service", "digits", "--path", "/digits/predict?index=7", "--duration", "30s",
               "--kills", "2", "--min-promotions", "3", "--concurrency", "4", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"not a JSON report (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    shown = json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=1)
    assert report["failed"] == 0, report["failures"]
    assert report["passed"], shown
    assert result.returncode == 0, shown
    assert report["model"] == "digits" and report["metric"] == "accuracy"
    promoted = [v["metrics"]["accuracy"] for v in report["versions"] if v["promoted"]]
    assert len(promoted) >= 4, shown
    assert all(b > a for a, b in zip(promoted, promoted[1:])), f"promoted accuracies not increasing: {promoted}"
    assert promoted[-1] > 0.8, f"the last promoted version is not well above chance: {promoted}"
    assert set(map(int, report["versions_answered"])) <= {v["version"] for v in report["versions"]}
    shutil.rmtree(report.get("data_dir") or tmp_path / "none", ignore_errors=True)
