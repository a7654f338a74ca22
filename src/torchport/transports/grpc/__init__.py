"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`)."""

from torchport.transports.grpc.app import GrpcServer

__all__ = ["GrpcServer"]
