"""The worker: holds pushed tasks, runs them, reports, heartbeats; drains on stop.

Its rooms, one decision each:

- `service`     `serve_worker` (the nursery tree) and `Worker`, which wires the parts and
                answers WorkerService (push, cancel, drain)
- `execution`   the tasks held: capacity, duplicates, running them, cancel, drain
- `outbox`      task updates until delivered: merging, batching, retrying
- `session`     the registration and heartbeats that keep the coordinator's view current
- `executors`   what running a command means (`echo`, `shell`)
"""
