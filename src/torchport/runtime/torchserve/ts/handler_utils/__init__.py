"""TorchServe's handler decorators."""
