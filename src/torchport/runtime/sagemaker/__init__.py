"""SageMaker PyTorch inference scripts (`inference.py`) run unchanged."""

from torchport.runtime.sagemaker.adapter import SageMakerHandler

__all__ = ["SageMakerHandler"]
