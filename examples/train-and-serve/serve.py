"""The example's service: classifies digits with the promoted version of the model.

Routed at /digits by flowers.toml (the SDK strips the prefix, so the routes below answer
/digits/predict and /digits). load() reads the promoted version's weights.npz, whichever
backend wrote it; until it returns, /healthz answers 503 and the gateway holds requests.

  GET  /digits/predict?index=N    classifies validation image N (0..449): no body needed,
                                  so a load generator can send it; the answer has the true label
  POST /digits/predict            {"pixels": [64 numbers 0..16]} (an 8x8 image, row by row)
  GET  /digits                    which version is served, on which backend

Every answer has "version" (the model version that answered). Bad input gets 400 with a
message saying what is wrong.
"""

import math
import numbers

import digits
import flowers

app = flowers.Service()
served = {}


@app.load
def load(model_path):
    if model_path is None:
        raise RuntimeError("serve.py serves a model: run it under Flowers as a service with model = \"digits\"")
    backend = digits.choose_backend()
    weights, state = digits.load(model_path / "weights.npz")
    model = digits.make_model(weights, backend)
    _, _, validation_x, validation_y = digits.split(*digits.load_data())
    model.probabilities(validation_x[:1])  # warms up (on a GPU: creates the CUDA context now)
    served.update(
        model=model,
        backend=backend,
        version=flowers.model_version(),
        epoch=state.get("epoch"),
        trained_by=state.get("backend"),
        validation_x=validation_x,
        validation_y=validation_y,
    )
    print(f"serving version {served['version']} (epoch {served['epoch']}, trained with "
          f"{served['trained_by']}) with {backend}", flush=True)


def bad_request(message):
    return flowers.Response({"error": message, "version": served.get("version")}, status=400)


def pixels_from(body):
    """The 64 pixels of a POST body, or a message saying what is wrong with it."""
    if not isinstance(body, dict) or "pixels" not in body:
        return None, 'expected a JSON object {"pixels": [64 numbers 0..16]}'
    pixels = body["pixels"]
    if not isinstance(pixels, list) or len(pixels) != digits.PIXELS:
        length = len(pixels) if isinstance(pixels, list) else type(pixels).__name__
        return None, f"pixels: expected a list of {digits.PIXELS} numbers (an 8x8 image row by row), got {length}"
    for i, value in enumerate(pixels):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return None, f"pixels[{i}]: expected a number 0..16, got {value!r}"
        if not 0 <= value <= 16:
            return None, f"pixels[{i}]: expected a number 0..16, got {value}"
    return [float(value) for value in pixels], None


@app.route("/predict", methods=("GET", "POST"))
def predict(request):
    answer = {"version": served["version"]}
    if request.method == "GET":
        count = len(served["validation_y"])
        text = request.query.get("index")
        if text is None:
            return bad_request(f"give ?index=N (a validation image, 0..{count - 1}) or POST "
                               '{"pixels": [64 numbers 0..16]}')
        try:
            index = int(text)
        except ValueError:
            return bad_request(f"index: expected an integer 0..{count - 1}, got {text!r}")
        if not 0 <= index < count:
            return bad_request(f"index: expected an integer 0..{count - 1}, got {index}")
        pixels = served["validation_x"][index]
        answer.update(index=index, expected=int(served["validation_y"][index]))
    else:
        pixels, problem = pixels_from(request.json())
        if problem:
            return bad_request(problem)
    probabilities = served["model"].probabilities([pixels])[0]
    answer.update(
        label=int(probabilities.argmax()),
        probabilities=[round(float(p), 4) for p in probabilities],
    )
    return answer


@app.route("/", methods=("GET",))
def info(request):
    return {
        "version": served["version"],
        "epoch": served["epoch"],
        "backend": served["backend"],
        "trained_by": served["trained_by"],
        "validation_images": len(served["validation_y"]),
    }


if __name__ == "__main__":
    app.run()
