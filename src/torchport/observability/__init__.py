"""What a server tells about itself: Prometheus metrics, request logs with request ids,
the live figures the dashboard draws, and the one place every request is counted."""
