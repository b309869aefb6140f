"""The example's training job: learns to read digits, one better version every few seconds.

Each epoch trains the perceptron of digits.py on a few mini-batches (so it starts poor and
improves over many versions), waits out the rest of EXAMPLE_EPOCH_SECONDS (3 s by default, so
that the versions come at a pace a person can watch, on any machine), measures its accuracy on
the held-out validation set and checkpoints it with flowers.checkpoint(): Flowers registers the
version and, under the example's policy (`accuracy`, higher is better), promotes it when it
beats the served one. It resumes from its newest checkpoint after a preemption, checks
flowers.should_stop() between mini-batches (so SIGTERM ends it within a moment: the last epoch's
work is redone after the resume) and exits when the accuracy has stopped improving for
EXAMPLE_PATIENCE epochs or after EXAMPLE_MAX_EPOCHS.

NumPy on a CPU slot; PyTorch on the GPU Flowers pinned when PyTorch sees one
(EXAMPLE_BACKEND=torch|numpy forces a backend). Either writes the same weights.npz.
"""

import os
import sys
import time

import digits
import flowers


def env_number(name, default, kind=float):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        sys.exit(f"train.py: {name}={text!r} is not a {kind.__name__}")
    if value < 0:
        sys.exit(f"train.py: {name}={text!r} must not be negative")
    return value


EPOCH_SECONDS = env_number("EXAMPLE_EPOCH_SECONDS", 3.0)
MAX_EPOCHS = env_number("EXAMPLE_MAX_EPOCHS", 60, int)
PATIENCE = env_number("EXAMPLE_PATIENCE", 8, int)
STEPS_PER_EPOCH = env_number("EXAMPLE_STEPS_PER_EPOCH", digits.STEPS_PER_EPOCH, int)
BATCH_SIZE = max(1, env_number("EXAMPLE_BATCH_SIZE", digits.BATCH_SIZE, int))
LEARNING_RATE = env_number("EXAMPLE_LEARNING_RATE", digits.LEARNING_RATE)
# An epoch must beat the best one by this much to count as an improvement for the patience.
MIN_IMPROVEMENT = 0.001


def wait_until(deadline):
    """Sleeps until `deadline` (time.monotonic()); False if Flowers asked the job to stop."""
    while time.monotonic() < deadline:
        if flowers.should_stop():
            return False
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return not flowers.should_stop()


def main():
    flowers.should_stop()  # installs the SIGTERM handler before the slow start
    backend = digits.choose_backend()
    pixels, labels = digits.load_data()
    train_x, train_y, validation_x, validation_y = digits.split(pixels, labels)
    state = {"epoch": 0, "best_accuracy": 0.0, "epochs_since_best": 0}
    weights = digits.initial_weights()
    resume = flowers.resume()
    if resume is not None:
        weights, saved = digits.load(resume / "weights.npz")
        state.update({key: saved[key] for key in state if key in saved})
        print(f"resumed from {resume} after epoch {state['epoch']} "
              f"(best accuracy {state['best_accuracy']:.3f})", flush=True)
    model = digits.make_model(weights, backend)
    where = f" on {model.device}" if backend == "torch" else ""
    print(f"training with {backend}{where}: {len(train_y)} training and {len(validation_y)} validation "
          f"images, {STEPS_PER_EPOCH} mini-batches of {BATCH_SIZE} per epoch, an epoch every "
          f"{EPOCH_SECONDS:g}s", flush=True)
    progress_warned = False

    while state["epoch"] < MAX_EPOCHS and state["epochs_since_best"] < PATIENCE:
        epoch = state["epoch"] + 1
        deadline = time.monotonic() + EPOCH_SECONDS
        train_loss = digits.train_epoch(model, train_x, train_y, epoch, STEPS_PER_EPOCH, BATCH_SIZE,
                                        LEARNING_RATE, stop=flowers.should_stop)
        if train_loss is None or not wait_until(deadline):
            print(f"asked to stop during epoch {epoch}; resuming after epoch {state['epoch']} later",
                  flush=True)
            return 0
        accuracy, loss = digits.evaluate(model, validation_x, validation_y)
        if accuracy > state["best_accuracy"] + MIN_IMPROVEMENT:
            state["best_accuracy"], state["epochs_since_best"] = accuracy, 0
        else:
            state["epochs_since_best"] += 1
        state["epoch"] = epoch
        metrics = {"accuracy": accuracy, "loss": loss, "train_loss": train_loss, "epoch": epoch}
        version = flowers.checkpoint(
            {"weights.npz": digits.save(model.numpy_weights(), {**state, "backend": backend})},
            metrics=metrics,
        )
        print(f"epoch {epoch}: accuracy {accuracy:.3f} loss {loss:.3f} -> version {version.version}"
              f"{' promoted' if version.promoted else ''} ({version.note})", flush=True)
        try:
            flowers.report(step=epoch, total=MAX_EPOCHS, metrics={"accuracy": accuracy, "loss": loss})
        except flowers.FlowersError as error:  # progress is a nicety; training goes on without it
            if not progress_warned:
                print(f"progress not reported: {error}", file=sys.stderr, flush=True)
                progress_warned = True

    reason = "reached EXAMPLE_MAX_EPOCHS" if state["epoch"] >= MAX_EPOCHS else \
        f"no better accuracy for {PATIENCE} epochs"
    print(f"done after epoch {state['epoch']}: {reason}; best accuracy {state['best_accuracy']:.3f}",
          flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except digits.DataUnavailable as error:
        sys.exit(f"train.py: {error}")
