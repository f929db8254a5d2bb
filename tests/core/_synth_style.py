"""A **stand-in** for a task app built with synth-ai 0.4-0.7 ("Gen C"): plain FastAPI,
answering the shapes recorded in design/COMPAT.md, so the reading side (check, evaluate,
the client) is proved against them without synth-ai installed.

* a wrong or missing key gets **HTTP 400** with ``detail.error.code == "unauthorised"``;
* ``POST /rollout`` requires ``trace_correlation_id`` and no ``run_id``, and answers
  ``reward_info.outcome_reward`` (no ``metrics``), ``success_status``;
* ``GET /info`` carries ``service.task``; a malformed body gets FastAPI's own 422.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict


class _Env(BaseModel):
    model_config = ConfigDict(extra="allow")
    seed: int | None = None
    config: dict[str, Any] = {}


class _Policy(BaseModel):
    model_config = ConfigDict(extra="allow")
    config: dict[str, Any] = {}


class GenCRolloutRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    trace_correlation_id: str
    env: _Env
    policy: _Policy


SEEDS = 6


def synth_style_app(key: str, *, seen: list[dict[str, Any]] | None = None) -> FastAPI:
    """Seeds 0-5; even seeds score 1.0, odd seeds 0.0 (success_status ``failure``)."""
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.url.path != "/":
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), key.encode()):
                return JSONResponse(
                    {
                        "detail": {
                            "error": {
                                "code": "unauthorised",
                                "message": "API key missing or invalid",
                            }
                        }
                    },
                    status_code=400,
                )
        return await call_next(request)

    @app.get("/")
    async def root() -> dict[str, Any]:
        return {"status": "ok", "service": "synth-style"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"healthy": True}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "service": {"task": {"id": "synth-style", "name": "Synth style"}, "version": "1"},
            "dataset": {"id": "numbers", "splits": ["train"]},
            "inference": {},
            "limits": {"max_turns": 1},
        }

    @app.get("/task_info")
    async def task_info() -> dict[str, Any]:
        return {"taskset": {"splits": {"train": list(range(SEEDS))}, "default_split": "train"}}

    @app.post("/rollout")
    async def rollout(body: GenCRolloutRequest) -> dict[str, Any]:
        if seen is not None:
            seen.append(body.model_dump())
        seed = body.env.seed or 0
        reward = 1.0 if seed % 2 == 0 else 0.0
        return {
            "trace_correlation_id": body.trace_correlation_id,
            "reward_info": {"outcome_reward": reward, "details": {"parity": seed % 2}},
            "success_status": "success" if reward else "failure",
        }

    return app
