"""The least a grpcio model service must do: a `ModelInfer` that answers without a model.

    .venv/bin/python -m benchmarks.peers.grpc_floor PORT PACKAGE

grpc.aio's server on uvloop, as `torchport serve` builds it (bytes in and out, parsed
here), parses each `ModelInferRequest`, hands it once to a worker thread and back (as any
service must that keeps a model's work off the event loop; the thread does nothing), and
answers a `ModelInferResponse` of the package's output shape and size (zeros) with the
request's id: no inference service, no batching, no model, no metrics. What it answers in
a second bounds any model service written on grpcio in one Python process on this
machine, torchport's included; the benchmark runs it beside torchport's REST and gRPC.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from torchport.archive import read_package
from torchport.tensors import to_raw
from torchport.transports.grpc.convert import pb


def answer_for(package: Path) -> bytes:
    """A response with each of the package's outputs for one row, as raw contents."""
    manifest = read_package(package).manifest
    response = pb.ModelInferResponse(model_name=manifest.name, model_version="1")
    for spec in manifest.signature.outputs:
        shape = [1 if d == -1 else d for d in spec.shape]
        response.outputs.add(name=spec.name, datatype=spec.datatype.value, shape=shape)
        response.raw_output_contents.append(to_raw(np.zeros(shape, spec.datatype.numpy)))
    return response.SerializeToString()


async def serve(port: int, package: Path) -> None:
    template = pb.ModelInferResponse.FromString(answer_for(package))
    workers = ThreadPoolExecutor(2)
    loop = asyncio.get_running_loop()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parsed = pb.ModelInferRequest.FromString(request)
        await loop.run_in_executor(workers, int)  # the model's thread, doing nothing
        response = pb.ModelInferResponse()
        response.CopyFrom(template)
        response.id = parsed.id
        return response.SerializeToString()

    async def live(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    handlers = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
            "ServerLive": grpc.unary_unary_rpc_method_handler(live),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
