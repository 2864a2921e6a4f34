"""The worker: queue, executors, heartbeats, batched reports."""
