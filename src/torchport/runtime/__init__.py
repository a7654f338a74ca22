"""Loading packages into runnable models, and the `Runner` interface every path shares."""

from torchport.runtime.batching import BatchingRunner, BatchObserver, BatchPolicy, ThreadBudget
from torchport.runtime.handler import Handler, HandlerContext, name_outputs
from torchport.runtime.process_pool import ProcessPoolRunner
from torchport.runtime.runner import (
    LocalRunner,
    PackageRunner,
    Runner,
    UnpackedPackage,
    check_examples,
    example_inputs,
    open_runner,
)

__all__ = [
    "BatchObserver",
    "BatchPolicy",
    "BatchingRunner",
    "Handler",
    "HandlerContext",
    "LocalRunner",
    "PackageRunner",
    "ProcessPoolRunner",
    "Runner",
    "ThreadBudget",
    "UnpackedPackage",
    "check_examples",
    "example_inputs",
    "name_outputs",
    "open_runner",
]
