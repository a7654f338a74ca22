"""A small Python client for torchport's management API."""

from torchport.client.management import ManagementClient

__all__ = ["ManagementClient"]
