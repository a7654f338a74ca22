"""`TorchServeHandler`: a TorchServe handler, unchanged, as a torchport handler.

The package has the raw signature (`torchport.raw_io`): each row is one request's body and
headers. A batch becomes what TorchServe hands `handle(data, context)` — a list with one
dict per request, `{"body": …}` (JSON bodies parsed, text bodies decoded, other bytes as
they are) or a form's fields by name (multipart or URL-encoded, as bytes), and a `Context`
whose request processors hold each request's headers — and the list
the handler returns becomes each request's answer, encoded as TorchServe encodes it
(bytes as they are, text as UTF-8, anything else as indented JSON), with the status and
headers the handler set for it. Failures answer as TorchServe's do (503 "Prediction
failed", a `PredictionException`'s own code and message), except that a batch of several
requests that fails is run again one request at a time, so one bad request fails alone.
"""

from __future__ import annotations

import email.policy
import io
import json
import logging
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.archive import HandlerEntry
from torchport.errors import ModelLoadError
from torchport.raw_io import BODY, answers, headers_of
from torchport.runtime.handler import Handler, HandlerContext
from torchport.runtime.loader import one_line
from torchport.runtime.scoped_import import ScopedImporter
from torchport.runtime.torchserve.ts import __version__ as TS_VERSION
from torchport.runtime.torchserve.ts.context import Context, RequestProcessor
from torchport.runtime.torchserve.ts.metrics.metric_cache import MetricsCache
from torchport.runtime.torchserve.ts.utils.util import (
    PredictionException,
    get_yaml_config,
    list_classes_from_module,
)
from torchport.types import Tensors

logger = logging.getLogger("torchport.torchserve")

MAR_MANIFEST = "MAR-INF/MANIFEST.json"
"""The archive's own manifest, kept in the package as TorchServe lays it out."""

Answer = tuple[bytes, int, dict[str, str]]
EntryPoint = Callable[[Any, Context], Any]

_ERROR_TYPES = {507: "InternalServerException", 503: "InternalServerException"}


class TorchServeHandler(Handler):
    """Runs a TorchServe handler module (a `BaseHandler` subclass or a `handle` function)."""

    def __init__(self, model: Any, context: HandlerContext, entry: HandlerEntry) -> None:
        super().__init__(model, context)
        files = context.files
        manifest = mar_manifest(files, context.name)
        config_file = manifest.get("model", {}).get("configFile")
        yaml_config = get_yaml_config(str(files / config_file)) if config_file else {}
        self.metrics = MetricsCache(context.name)
        self.ts_context = Context(
            model_name=context.name,
            model_dir=str(files),
            manifest=manifest,
            batch_size=int(context.options.get("max_batch_size", 1)),
            gpu=None,
            mms_version=TS_VERSION,
            metrics=self.metrics,
            model_yaml_config=yaml_config,
        )
        self.ts_context.preloaded_model = model
        module = ScopedImporter(files, {"ts": "torchport.runtime.torchserve.ts"}).load(entry.file)
        self._handle, initialize = entry_point(module, entry.object, entry.file)
        # TorchServe runs one batch at a time per worker, and handlers keep a batch's state
        # on `self` and on the context: so does this.
        self._lock = threading.Lock()
        try:
            initialize(self.ts_context)
        except Exception as exc:
            raise ModelLoadError(
                f"{entry.file}: the handler's initialize failed: {one_line(exc)}"
            ) from exc

    def recorded_metrics(self) -> list[tuple[str, str, str, float]]:
        return self.metrics.recorded()

    def __call__(self, inputs: Tensors) -> Tensors:
        bodies = list(inputs[BODY])
        headers = headers_of(inputs, len(bodies))
        with self._lock:
            rows, failed = self._run(bodies, headers)
            if failed and len(bodies) > 1:
                rows = [self._run([b], [h])[0][0] for b, h in zip(bodies, headers, strict=True)]
        return answers(rows)

    def _run(self, bodies: list[bytes], headers: list[dict[str, str]]) -> tuple[list[Answer], bool]:
        """Each request's answer, and whether the batch failed as a whole."""
        count = len(bodies)
        data = []
        processors = []
        for body, request_headers in zip(bodies, headers, strict=True):
            content_type = request_headers.get("content-type", "")
            fields = request_fields(bytes(body), content_type)
            data.append(fields)
            types = {name: {"content-type": content_type} for name in fields}
            processors.append(RequestProcessor({**request_headers, **types}))
        context = self.ts_context
        context.request_processor = processors
        context.request_ids = {
            i: h.get("x-request-id") or str(uuid.uuid4()) for i, h in enumerate(headers)
        }
        self.metrics.set_request_ids(context.request_ids)
        try:
            returned = self._handle(data, context)
        except PredictionException as exc:
            return failure(count, exc.message, exc.error_code), True
        except MemoryError:
            logger.error("model %s: out of memory", context.model_name, exc_info=True)
            return failure(count, "Out of resources", 507), True
        except Exception as exc:
            if "CUDA" in str(exc):
                return failure(count, "Out of resources", 507), True
            logger.warning("model %s: the handler failed", context.model_name, exc_info=True)
            return failure(count, "Prediction failed", 503), True
        if not isinstance(returned, list):
            logger.warning(
                "model %s: the handler returned %s, not a list",
                context.model_name,
                type(returned).__name__,
            )
            return failure(count, "Invalid model predict output", 503), True
        if len(returned) != count:
            logger.warning(
                "model %s: the handler returned %d answers for %d requests",
                context.model_name,
                len(returned),
                count,
            )
            return failure(count, "number of batch response mismatched", 503), True
        rows: list[Answer] = []
        for i, value in enumerate(returned):
            try:
                body = encode_answer(value)
            except TypeError:
                logger.warning(
                    "model %s: cannot encode an answer", context.model_name, exc_info=True
                )
                return failure(count, "Unsupported model output data type.", 503), True
            status, _phrase = context.get_response_status(i)
            rows.append((body, int(status or 200), dict(context.get_response_headers(i))))
        return rows, False


def entry_point(
    module: Any, function_name: str | None, file: str
) -> tuple[EntryPoint, Callable[[Context], Any]]:
    """What TorchServe calls in a handler module: the function `function_name` (default
    `handle`) when the module has it, else the `handle` of the one class it defines."""
    name = function_name or "handle"
    function = getattr(module, name, None)
    if callable(function):
        return function, lambda context: function(None, context)
    classes = list_classes_from_module(module)
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ModelLoadError(
            f"{file}: a TorchServe handler defines one class or a function named '{name}' "
            f"(classes found: {found})"
        )
    try:
        service = classes[0]()
    except Exception as exc:
        raise ModelLoadError(f"{file}: {classes[0].__name__}() failed: {exc}") from exc
    if not callable(getattr(service, "handle", None)):
        raise ModelLoadError(f"{file}: class {classes[0].__name__} has no handle method")
    initialize = getattr(service, "initialize", None)
    return service.handle, initialize if callable(initialize) else (lambda context: None)


def mar_manifest(files: Path, name: str) -> dict[str, Any]:
    path = files / MAR_MANIFEST
    if path.is_file():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            return loaded
    return {"model": {"modelName": name}}


def request_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """A request as TorchServe hands it to a handler: a form's fields (multipart or
    URL-encoded) by name, as bytes; any other body as `body`, decoded by its type."""
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        fields: dict[str, Any] = {}
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    fields[name] = bytearray(payload)
        return fields
    if media == "application/x-www-form-urlencoded":
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: bytearray(value.encode()) for name, value in pairs}
    return {"body": decode_body(body, content_type)}


def decode_body(body: bytes, content_type: str) -> Any:
    """A body as TorchServe's worker hands it to the handler: JSON parsed, text decoded,
    anything else (or what fails to decode) as bytes. The type is matched as TorchServe
    matches it: its parameters aside, letter case counting."""
    media = content_type.split(";")[0].strip()
    try:
        if media == "application/json":
            return json.loads(body)
        if media.startswith("text"):
            return body.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        pass
    return bytearray(body)


def encode_answer(value: Any) -> bytes:
    """An answer's body as TorchServe writes it (TypeError when it cannot be written)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)  # what TorchServe sends; torchport never loads it back
        return buffer.getvalue()
    if isinstance(value, np.generic):
        value = value.item()
    return json.dumps(value, indent=2).encode("utf-8")


def failure(count: int, message: str, code: int) -> list[Answer]:
    """Every request of a batch answers TorchServe's error body."""
    kind = _ERROR_TYPES.get(code, "InternalServerException")
    body = json.dumps({"code": code, "type": kind, "message": message}, indent=2)
    headers: Mapping[str, str] = {"content-type": "application/json"}
    return [((body + "\n").encode(), code, dict(headers)) for _ in range(count)]
