"""The `mlp` example: a small multi-layer perceptron, 32 → 128 → 128 → 8."""

from torch import nn


def build() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 8),
    )
