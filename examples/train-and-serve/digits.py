"""The example's model: a one-hidden-layer perceptron that classifies 8x8 images of digits.

Shared by train.py and serve.py. Two backends compute the same thing: NumPy on a CPU slot,
PyTorch on the GPU Flowers pinned (CUDA_VISIBLE_DEVICES holds its UUID, so it is "cuda:0").
Whichever backend trained a version, its weights are saved as plain NumPy arrays in
`weights.npz`, so any backend can serve it.

The data set is scikit-learn's bundled digits (1797 images, offline). Where scikit-learn is
absent (a GPU machine with PyTorch and nothing else), EXAMPLE_DIGITS names a copy of its
`sklearn/datasets/data/digits.csv.gz`.
"""

import gzip
import importlib.util
import io
import os

import numpy as np

PIXELS = 64  # 8x8, each 0..16
CLASSES = 10
HIDDEN = 32
SEED = 0
VALIDATION_FRACTION = 0.25
# Few small steps per epoch: the model starts poor and improves over a dozen versions.
STEPS_PER_EPOCH = 10
BATCH_SIZE = 32
LEARNING_RATE = 0.2


class DataUnavailable(RuntimeError):
    pass


def load_data():
    """All digits as (pixels float32 [n, 64] in 0..16, labels int64 [n])."""
    path = os.environ.get("EXAMPLE_DIGITS")
    if path:
        if not os.path.isfile(path):
            raise DataUnavailable(f"EXAMPLE_DIGITS={path}: no such file (a copy of scikit-learn's "
                                  "sklearn/datasets/data/digits.csv.gz is expected)")
        return _read_csv(path)
    # scikit-learn's own file, read without importing scikit-learn (and SciPy with it), which
    # takes seconds on a busy CPU: every promotion starts a service and resumes the job.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.origin:
        raise DataUnavailable(
            "the digits data set is not available: install scikit-learn (pip install scikit-learn), "
            "or set EXAMPLE_DIGITS to a copy of scikit-learn's sklearn/datasets/data/digits.csv.gz"
        )
    bundled = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    if os.path.isfile(bundled):
        return _read_csv(bundled)
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    return pixels.astype(np.float32), labels.astype(np.int64)


def _read_csv(path):
    """scikit-learn's digits.csv(.gz): 64 pixels then the label on each line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    if table.shape[1] != PIXELS + 1:
        raise DataUnavailable(f"{path}: expected {PIXELS + 1} columns (64 pixels and a label), "
                              f"got {table.shape[1]}")
    return table[:, :-1], table[:, -1].astype(np.int64)


def split(pixels, labels):
    """The fixed, seeded split: (train_x, train_y, validation_x, validation_y)."""
    order = np.random.default_rng(SEED).permutation(len(labels))
    cut = int(len(labels) * (1 - VALIDATION_FRACTION))
    train, validation = order[:cut], order[cut:]
    return pixels[train], labels[train], pixels[validation], labels[validation]


def initial_weights():
    rng = np.random.default_rng(SEED)
    return {
        "w1": (rng.standard_normal((PIXELS, HIDDEN)) / np.sqrt(PIXELS)).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b2": np.zeros(CLASSES, np.float32),
    }


def save(weights, state):
    """The bytes of weights.npz: the four arrays plus `state` (numbers, e.g. the epoch)."""
    buffer = io.BytesIO()
    extra = {f"state_{key}": np.asarray(value) for key, value in state.items()}
    np.savez(buffer, **weights, **extra)
    return buffer.getvalue()


def load(path):
    """(weights, state) from a weights.npz file written by save()."""
    with np.load(path) as npz:
        weights = {key: npz[key].astype(np.float32) for key in ("w1", "b1", "w2", "b2")}
        state = {key[len("state_"):]: npz[key].item() for key in npz.files if key.startswith("state_")}
    hidden = weights["b1"].shape[0]
    expected = {"w1": (PIXELS, hidden), "b1": (hidden,), "w2": (hidden, CLASSES), "b2": (CLASSES,)}
    for key, shape in expected.items():
        if weights[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {weights[key].shape}, expected {shape}")
    return weights, state


def choose_backend():
    """"torch" when PyTorch and a CUDA GPU are there, else "numpy"; EXAMPLE_BACKEND forces one."""
    forced = os.environ.get("EXAMPLE_BACKEND", "").strip().lower()
    if forced not in ("", "auto", "torch", "numpy"):
        raise ValueError(f"EXAMPLE_BACKEND={forced!r}: expected torch, numpy or auto")
    if forced == "numpy":
        return "numpy"
    try:
        import torch
    except ImportError:
        if forced == "torch":
            raise RuntimeError("EXAMPLE_BACKEND=torch but PyTorch is not installed") from None
        return "numpy"
    if forced == "torch" or torch.cuda.is_available():
        return "torch"
    return "numpy"


def torch_device():
    import torch

    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def _softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class NumpyModel:
    """The perceptron in NumPy: forward, backward and SGD by hand."""

    backend = "numpy"

    def __init__(self, weights):
        self.weights = {key: value.copy() for key, value in weights.items()}

    def probabilities(self, pixels):
        w = self.weights
        hidden = np.maximum(0, (np.asarray(pixels, np.float32) / 16.0) @ w["w1"] + w["b1"])
        return _softmax(hidden @ w["w2"] + w["b2"])

    def step(self, pixels, labels, learning_rate):
        """One mini-batch of SGD on the cross-entropy; returns the batch's mean loss."""
        w = self.weights
        x = pixels / 16.0
        pre = x @ w["w1"] + w["b1"]
        hidden = np.maximum(0, pre)
        probabilities = _softmax(hidden @ w["w2"] + w["b2"])
        n = len(labels)
        loss = float(-np.log(probabilities[np.arange(n), labels] + 1e-12).mean())
        grad_logits = probabilities
        grad_logits[np.arange(n), labels] -= 1
        grad_logits /= n
        grad_hidden = (grad_logits @ w["w2"].T) * (pre > 0)
        w["w2"] -= learning_rate * (hidden.T @ grad_logits)
        w["b2"] -= learning_rate * grad_logits.sum(axis=0)
        w["w1"] -= learning_rate * (x.T @ grad_hidden)
        w["b1"] -= learning_rate * grad_hidden.sum(axis=0)
        return loss

    def numpy_weights(self):
        return {key: value.copy() for key, value in self.weights.items()}


class TorchModel:
    """The same perceptron in PyTorch, on the GPU Flowers pinned (or the CPU without one)."""

    backend = "torch"

    def __init__(self, weights, device=None):
        import torch

        self.torch = torch
        self.device = device or torch_device()
        self.weights = {
            key: torch.tensor(value, dtype=torch.float32, device=self.device, requires_grad=True)
            for key, value in weights.items()
        }

    def _logits(self, x):
        w = self.weights
        hidden = self.torch.relu((x / 16.0) @ w["w1"] + w["b1"])
        return hidden @ w["w2"] + w["b2"]

    def probabilities(self, pixels):
        torch = self.torch
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(pixels, np.float32), device=self.device)
            return torch.softmax(self._logits(x), dim=1).cpu().numpy()

    def step(self, pixels, labels, learning_rate):
        torch = self.torch
        x = torch.as_tensor(pixels, device=self.device)
        y = torch.as_tensor(labels, device=self.device)
        loss = torch.nn.functional.cross_entropy(self._logits(x), y)
        for value in self.weights.values():
            value.grad = None
        loss.backward()
        with torch.no_grad():
            for value in self.weights.values():
                value -= learning_rate * value.grad
        return float(loss.item())

    def numpy_weights(self):
        return {key: value.detach().cpu().numpy().astype(np.float32) for key, value in self.weights.items()}


def make_model(weights, backend):
    return TorchModel(weights) if backend == "torch" else NumpyModel(weights)


def evaluate(model, pixels, labels):
    """(accuracy, mean cross-entropy loss) of `model` on a labelled set."""
    probabilities = model.probabilities(pixels)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    loss = float(-np.log(probabilities[np.arange(len(labels)), labels] + 1e-12).mean())
    return accuracy, loss


def train_epoch(model, train_x, train_y, epoch, steps=STEPS_PER_EPOCH, batch_size=BATCH_SIZE,
                learning_rate=LEARNING_RATE, stop=lambda: False):
    """One epoch's mini-batches, drawn by a generator seeded with the epoch's number, so an
    epoch redone after a resume is the same epoch. Returns the mean training loss, or None
    when `stop()` turned true between two mini-batches."""
    rng = np.random.default_rng(SEED * 1_000_003 + epoch)
    losses = []
    for _ in range(steps):
        if stop():
            return None
        batch = rng.integers(0, len(train_y), batch_size)
        losses.append(model.step(train_x[batch], train_y[batch], learning_rate))
    return float(np.mean(losses)) if losses else 0.0
