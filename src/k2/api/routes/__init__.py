"""The /v1 routes, one module per area, and the unauthenticated health checks."""
