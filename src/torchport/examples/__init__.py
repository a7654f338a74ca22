"""The example models, built by the project itself with no downloads."""

from torchport.examples.builders import NAMES, Built, build_examples, register_examples

__all__ = ["NAMES", "Built", "build_examples", "register_examples"]
