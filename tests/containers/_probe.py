"""Shared by tests/containers and tests/interop: a rollout that waits until released and
records what became of each call."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from taskapp import TaskAppConfig
from tests.helpers import demo_config

__all__ = ["Probe", "probe_config", "wait_for"]


class Probe:
    """A rollout that waits until released, and records what became of each call."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.release = threading.Event()

    async def rollout(self, request: Any, http_request: Any) -> dict[str, Any]:
        self.started.append(request.run_id)
        try:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.append(request.run_id)
            raise
        self.finished.append(request.run_id)
        prompt = request.policy.config.get("prompt", "")
        return {
            "run_id": request.run_id,
            "metrics": {
                "outcome_score": 1.0 if "good" in prompt else 0.0,
                "details": {"feedback": f"prompt had {len(prompt)} chars", "predicted": "x"},
            },
            "reward_info": {"outcome_reward": 0.0, "outcome_objectives": {"brevity": 0.5}},
        }


def probe_config(probe: Probe, **overrides: Any) -> TaskAppConfig:
    fields: dict[str, Any] = {"rollout": probe.rollout, "prompts": {"prompt": "seed {message}"}}
    fields.update(overrides)
    return demo_config(**fields)  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
