"""The HTTP API (quart-trio on hypercorn)."""
