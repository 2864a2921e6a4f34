"""What the parts of one coordinator share: its id, settings, database, the registry of its
workers, and the waker of its dispatcher.

Every part (rpc, dispatcher, liveness, notifications) holds the same `Coordinator` and
nothing else of the others, except the RPC handlers, which hand new workers to liveness.
Whoever may have made a task due or freed credit calls `waker.wake()`; only the
dispatcher sleeps on it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from tm.aio.pg import Database
from tm.coordinator.registry import Registry
from tm.coordinator.rounds import Waker
from tm.settings import CoordinatorSettings


def new_coordinator_id() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


@dataclass(eq=False)
class Coordinator:
    settings: CoordinatorSettings
    db: Database
    id: str = field(default_factory=new_coordinator_id)
    registry: Registry = field(default_factory=Registry)
    waker: Waker = field(default_factory=Waker)

    def __repr__(self) -> str:
        return f"<Coordinator {self.id} {self.registry!r}>"
