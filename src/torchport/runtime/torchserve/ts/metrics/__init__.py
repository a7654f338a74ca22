"""TorchServe's handler metrics: `context.metrics` and the types handlers name."""
