"""Transports: protocol shells over the services. Each knows nothing of the others."""
