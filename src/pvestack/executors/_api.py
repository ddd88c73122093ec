"""The token's executor: runs ``api`` actions through the client. Preconditions are
checked first by the engine (``executors._preconditions``)."""

from __future__ import annotations

from collections.abc import Callable

from pvestack._client import PveClient
from pvestack._model import Action, Actor


class ApiExecutor:
    def __init__(self, client: PveClient, *, task_timeout: float = 900.0) -> None:
        self.client = client
        self.task_timeout = task_timeout

    def run(self, action: Action, *, on_progress: Callable[[str], None] | None = None) -> None:
        if action.actor is not Actor.API:
            raise ValueError(f"{action.id} is a {action.actor.value} action, not an api one")
        for call in action.api:
            self.client.run(call, timeout=self.task_timeout, on_progress=on_progress)
