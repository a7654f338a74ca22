"""The `torchport` command."""
