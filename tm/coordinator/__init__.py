"""The coordinator: registers workers, dispatches due tasks to them, recovers lost ones.

Its rooms, one decision each (all over one shared `state.Coordinator`):

- `service`        `serve_coordinator`: the nursery tree, nothing else
- `state`          what the parts share: id, settings, database, registry, waker
- `registry`       the workers known here: address, channel, credit, deadline
- `rpc`            CoordinatorService: register, heartbeat, report; input checks
- `dispatcher`     who gets which due task: claim rounds, push after commit, undo, backoff
- `liveness`       when a worker is lost and what becomes of its tasks; the lease reaper
- `notifications`  LISTEN tm_due (wake the dispatcher) and tm_cancel (relay to workers)
- `recurring`      occurrences of recurring schedules become tasks
- `rounds`         the timer loop of dispatcher and recurring (`Waker`, `run_rounds`)

The policies themselves are pure, in tm.core (dispatch credit, backoff) and tm.db (what a
claim, report or recovery does to the rows).
"""
