"""Real Inspect providers behind a task app: a model error is a failed rollout carrying
the provider's message with the key redacted, never an HTTP 500 (issue 23).

Inspect's real openai provider (the openai package) talks to a local **stand-in** for
the OpenAI API that refuses the key and quotes it, as OpenAI does.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from taskapp import InProcessTaskApp, evaluate
from taskapp.testing.helpers import free_port
from tests.inspect._helpers import target

KEY = "sk-test-inspect-7d1e5c2b9a"


def _refusing_openai() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": f"Incorrect API key provided: {KEY}.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
            status_code=401,
        )

    return app


def test_provider_error_is_a_failed_rollout_with_the_key_redacted(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("INSPECT_LOG_LEVEL", raising=False)
    with InProcessTaskApp(app=_refusing_openai(), port=free_port()) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{fake.url}/v1")
        result = evaluate(
            target("no_prompt"), seeds="0-3", concurrency=4, policy={"model": "openai/gpt-4o-mini"}
        )
    assert len(result.results) == 4
    for r in result.results:
        assert r.http_status == 200 and r.success_status == "runtime_error"
        error = r.details["error"]
        assert "Incorrect API key provided" in error and "401" in error
        assert KEY not in error and "[redacted" in error
        assert KEY not in str(r.details)
    # nor on the console: Inspect's sample-error warnings quote the provider's message
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err
