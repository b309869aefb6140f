"""The Python SDK of Flowers: services and training jobs in a few lines, standard library only.

Services (see :mod:`flowers._service` for readiness, routes and shutdown)::

    app = flowers.Service()

    @app.load
    def load(model_path): ...              # runs once before the service is ready

    @app.route("/predict")
    def predict(request): return {"label": 3}

    app.run()                              # 127.0.0.1:$FLOWERS_PORT until SIGTERM

    flowers.serve_wsgi(wsgi_app, load=None)    # or an existing WSGI app
    flowers.serve_asgi(asgi_app, load=None)    # or an existing ASGI 3 app

Jobs (see :mod:`flowers._job`)::

    flowers.resume()                       # the last checkpoint's directory, or None
    flowers.checkpoint({"state.json": data}, metrics={"eval_loss": 0.3})   # a new version
    flowers.report(step=10, total=100, metrics={"loss": 0.5})              # progress
    flowers.should_stop()                  # True once preempted: checkpoint and return

Errors: :class:`FlowersError` and its subclasses :class:`NotUnderFlowers`,
:class:`ControlAPIError`, :class:`Unreachable` and :class:`BadRequest`; ``TypeError`` and
``ValueError`` for wrong arguments. Every message says what to do.
"""

from ._errors import BadRequest, ControlAPIError, FlowersError, NotUnderFlowers, Unreachable
from ._job import Version, checkpoint, report, resume, should_stop
from ._service import (
    Headers,
    Request,
    Response,
    Service,
    model_path,
    model_version,
    serve_asgi,
    serve_wsgi,
)

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "ControlAPIError",
    "FlowersError",
    "Headers",
    "NotUnderFlowers",
    "Request",
    "Response",
    "Service",
    "Unreachable",
    "Version",
    "checkpoint",
    "model_path",
    "model_version",
    "report",
    "resume",
    "serve_asgi",
    "serve_wsgi",
    "should_stop",
]
