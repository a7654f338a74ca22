"""SageMaker: CreateModel and CreateEndpointConfig requests for the image."""

from __future__ import annotations

from typing import Any


def sagemaker_model(name: str, image: str, env: dict[str, str]) -> dict[str, Any]:
    """A `CreateModel` request (`aws sagemaker create-model --cli-input-json file://…`)."""
    keep = {k: v for k, v in env.items() if k != "TORCHPORT_HTTP_PORT"}  # SageMaker sets it
    return {
        "ModelName": name,
        "PrimaryContainer": {
            "Image": f"<account>.dkr.ecr.<region>.amazonaws.com/{image}",
            "Environment": keep,
        },
        "ExecutionRoleArn": "arn:aws:iam::<account>:role/<sagemaker-execution-role>",
    }


def sagemaker_endpoint_config(name: str, replicas: int) -> dict[str, Any]:
    return {
        "EndpointConfigName": f"{name}-config",
        "ProductionVariants": [
            {
                "VariantName": "primary",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": replicas,
            }
        ],
    }
