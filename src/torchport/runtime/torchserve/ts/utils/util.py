"""The helpers of TorchServe's `ts.utils.util` that handlers call."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

logger = logging.getLogger("torchport.torchserve")


class PredictionException(Exception):
    """Raised by a handler: every request of the batch answers `error_code` with `message`."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes defined in `module` itself (not imported into it), by name."""
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module.__name__
    ]
    if parent_class is not None:
        return [c for c in classes if issubclass(c, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """`index_to_name.json`: class index (as text) → label; None when the file is absent."""
    if not os.path.isfile(mapping_file_path):
        logger.debug("%r is missing: outputs will not name their classes", mapping_file_path)
        return None
    with open(mapping_file_path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise ValueError('index->name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(i): str(name) for i, name in enumerate(names)}
    out: dict[str, str] = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError("labels in index->name mapping must be either str or List[str]")
        out[str(key)] = label
    return out


def map_class_to_label(
    probs: list[list[float]],
    mapping: dict[str, str] | None = None,
    lbl_classes: Iterable[Sequence[int]] | None = None,
) -> list[dict[str, float]]:
    """One `{label: probability}` per row, labels from `mapping` (else the index as text)."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = itertools.repeat(range(len(probs[0])), len(probs))
    return [
        {
            (mapping[str(cls)] if mapping is not None else str(cls)): prob
            for cls, prob in zip(classes, row, strict=False)
        }
        for classes, row in zip(lbl_classes, probs, strict=False)
    ]


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    """A model's `model-config.yaml` (safe YAML only)."""
    import yaml

    with open(yaml_file_path) as f:
        config = yaml.safe_load(f)
    return config if isinstance(config, dict) else {}
