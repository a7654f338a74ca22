"""TorchServe's handler utilities."""
