"""Loading packages into runnable models, the `Runner` interface every path shares, the
batcher, and the backends that run a version's batches."""

from torchport.runtime.backends import Backend, BackendName, Plan
from torchport.runtime.batching import Batcher, BatchObserver, BatchPolicy
from torchport.runtime.handler import Handler, HandlerContext, name_outputs
from torchport.runtime.placement import Placement, Scaling, Workers
from torchport.runtime.process_pool import ProcessPoolRunner
from torchport.runtime.runner import (
    Deployment,
    LocalRunner,
    PackageRunner,
    Runner,
    UnpackedPackage,
    check_examples,
    example_inputs,
    open_runner,
)
from torchport.runtime.workers import ThreadBudget, WorkerPool

__all__ = [
    "Backend",
    "BackendName",
    "BatchObserver",
    "BatchPolicy",
    "Batcher",
    "Deployment",
    "Handler",
    "HandlerContext",
    "LocalRunner",
    "PackageRunner",
    "Placement",
    "Plan",
    "ProcessPoolRunner",
    "Runner",
    "Scaling",
    "ThreadBudget",
    "UnpackedPackage",
    "WorkerPool",
    "Workers",
    "check_examples",
    "example_inputs",
    "name_outputs",
    "open_runner",
]
