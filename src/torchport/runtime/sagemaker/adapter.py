"""`SageMakerHandler`: a SageMaker `inference.py`, unchanged, as a torchport handler.

The package has the raw signature (`torchport.raw_io`); each row is one request. As the
SageMaker inference toolkit does, the script's `model_fn(model_dir)` loads the model once
(default: the TorchScript `model.pt`), and each request's body — text for JSON and CSV,
bytes otherwise — goes through `transform_fn(model, body, content_type, accept)` or
`input_fn` → `predict_fn` → `output_fn` (the PyTorch container's defaults for those left
out); a function that takes one argument more also gets the request's context. The answer
is what `output_fn` returned (bytes, text, or a `(body, content_type)` pair), of the type
Accept asked for (default `application/json`, or `SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`).

Failures are answers, never tracebacks: a content type no function reads is 415, an Accept
none writes is 406, a body `input_fn` cannot read is 400, a `BaseInferenceToolkitError`
its own status, anything else in the model's code 503.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from torchport.archive import HandlerEntry
from torchport.errors import ModelLoadError
from torchport.raw_io import BODY, answers, headers_of
from torchport.runtime.handler import Handler, HandlerContext
from torchport.runtime.loader import one_line
from torchport.runtime.sagemaker import defaults
from torchport.runtime.sagemaker.toolkit import content_types, errors
from torchport.runtime.scoped_import import ScopedImporter
from torchport.runtime.torchserve.adapter import encode_answer
from torchport.runtime.torchserve.ts.context import Context, RequestProcessor
from torchport.types import Tensors

logger = logging.getLogger("torchport.sagemaker")

TOOLKIT = "torchport.runtime.sagemaker.toolkit"
FUNCTIONS = ("model_fn", "transform_fn", "input_fn", "predict_fn", "output_fn")

Answer = tuple[bytes, int, dict[str, str]]


class _Stage(Exception):
    """A failure, with the status it answers."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class SageMakerHandler(Handler):
    """Runs a SageMaker PyTorch inference script (`code/inference.py`)."""

    def __init__(self, model: Any, context: HandlerContext, entry: HandlerEntry) -> None:
        super().__init__(model, context)
        script = context.files / entry.file
        module = ScopedImporter(script.parent, {"sagemaker_inference": TOOLKIT}).load(script.name)
        found = {name: getattr(module, name, None) for name in FUNCTIONS}
        if found["transform_fn"] and (
            found["input_fn"] or found["predict_fn"] or found["output_fn"]
        ):
            raise ModelLoadError(
                f"{entry.file}: transform_fn cannot be used with input_fn, predict_fn or "
                "output_fn (SageMaker's rule)"
            )
        self.transform_fn = found["transform_fn"]
        self.input_fn = found["input_fn"] or defaults.default_input_fn
        self.predict_fn = found["predict_fn"] or defaults.default_predict_fn
        self.output_fn = found["output_fn"] or defaults.default_output_fn
        self.default_accept = os.environ.get(
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", content_types.JSON
        )
        self.ts_context = Context(
            context.name, str(context.files), {}, 1, None, "torchport", metrics=None
        )
        self._lock = threading.Lock()
        model_fn = found["model_fn"]
        try:
            if model_fn is not None:
                self.model = _call(model_fn, self.ts_context, str(context.files))
            elif model is None:
                self.model = defaults.default_model_fn(str(context.files))
        except Exception as exc:
            raise ModelLoadError(f"{entry.file}: model_fn failed: {one_line(exc)}") from exc

    def __call__(self, inputs: Tensors) -> Tensors:
        bodies = list(inputs[BODY])
        headers = headers_of(inputs, len(bodies))
        with self._lock:
            return answers([self._one(bytes(b), h) for b, h in zip(bodies, headers, strict=True)])

    def _one(self, body: bytes, headers: dict[str, str]) -> Answer:
        content_type = (headers.get("content-type") or "").split(";")[0].strip()
        accept = headers.get("accept") or ""
        if not accept or accept == content_types.ANY:
            accept = self.default_accept
        self.ts_context.request_processor = [RequestProcessor(dict(headers))]
        try:
            result = self._transform(body, content_type, accept)
        except _Stage as failed:
            return failed.message.encode(), failed.status, {"content-type": "text/plain"}
        answer_type = accept
        if isinstance(result, tuple) and len(result) == 2:
            result, answer_type = result
        try:
            encoded = encode_answer(result)
        except TypeError:
            return b"the script's answer cannot be written", 503, {"content-type": "text/plain"}
        return encoded, 200, {"content-type": str(answer_type)}

    def _transform(self, body: bytes, content_type: str, accept: str) -> Any:
        data: Any = body
        if content_type in content_types.UTF8_TYPES:
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError:
                raise _Stage(400, f"the {content_type} body is not UTF-8") from None
        context = self.ts_context
        transform_fn = self.transform_fn
        if transform_fn is not None:
            return _stage(lambda: _call(transform_fn, context, self.model, data,
                                        content_type, accept), 415)  # fmt: skip
        decoded = _stage(lambda: _call(self.input_fn, context, data, content_type), 415, 400)
        prediction = _stage(lambda: _call(self.predict_fn, context, decoded, self.model), 406)
        return _stage(lambda: _call(self.output_fn, context, prediction, accept), 406)


def _call(function: Callable[..., Any], context: Context, *args: Any) -> Any:
    """The toolkit's rule: a function with one parameter more also gets the context."""
    try:
        wanted = len(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        wanted = len(args)
    return function(*args, context) if wanted == len(args) + 1 else function(*args)


def _stage(run: Callable[[], Any], unsupported: int, failed: int = 503) -> Any:
    """Run one step; its failure as the status it answers."""
    try:
        return run()
    except _Stage:
        raise
    except errors.UnsupportedFormatError as exc:
        raise _Stage(unsupported, str(exc)) from None
    except errors.BaseInferenceToolkitError as exc:
        status = exc.status_code if 400 <= int(exc.status_code) <= 599 else 503
        raise _Stage(status, str(exc.message)) from None
    except Exception as exc:
        logger.warning("the SageMaker script failed", exc_info=True)
        if failed == 400:
            raise _Stage(
                400, f"the request could not be read: {type(exc).__name__}: {exc}"
            ) from None
        raise _Stage(503, "Prediction failed") from None
