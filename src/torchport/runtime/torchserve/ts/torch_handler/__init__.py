"""TorchServe's handler classes: `BaseHandler` and the built-in image classifier."""
