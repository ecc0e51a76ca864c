"""What the service tells its operators: metrics, the request in progress, traces."""
