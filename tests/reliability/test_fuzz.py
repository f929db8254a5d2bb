"""Fuzzing the task-app contract with real tools: schemathesis and hypothesis.

Two apps on real uvicorn: the bundled support-intents example and a minimal TaskAppConfig.
schemathesis generates requests for every operation of the app's own OpenAPI document
(``/openapi.json``); hypothesis adds ``policy.config`` values aimed at the example's
validation (URLs, NaN/inf numbers, huge integers, env-var names). Every response must be
below 500, and neither the app's API key nor a host secret may appear in any body, with
the right key, a wrong key or none.

Short profile by default (CI); ``TASKAPP_FUZZ=long`` runs many more examples.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskapp import InProcessTaskApp, create_task_app
from taskapp.examples.support_intents import build_config
from tests.helpers import demo_config

LONG = os.environ.get("TASKAPP_FUZZ", "").lower() == "long"
EXAMPLES = 500 if LONG else 40
HOST_SECRET = "fuzz-host-secret-never-in-a-body-0001"

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.server_errors: list[str] = []
        self.leaks: list[str] = []

    def check(self, what: str, response: Any, secrets: list[str]) -> None:
        self.cases += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{what}: HTTP {response.status_code} {response.text[:300]}")
        for secret in secrets:
            if secret in response.text:
                self.leaks.append(f"{what}: a secret in the body (HTTP {response.status_code})")


@pytest.fixture(scope="module", params=["support-intents", "minimal"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    os.environ["FUZZ_HOST_SECRET"] = HOST_SECRET
    try:
        if request.param == "support-intents":
            app: Any = create_task_app(build_config(api_key_envs=[]), api_keys=[])
        else:
            app = create_task_app(demo_config(), api_keys=[])
        with InProcessTaskApp(app=app, port=0) as task_app:
            assert task_app.url is not None
            yield task_app.url, task_app.api_key
    finally:
        os.environ.pop("FUZZ_HOST_SECRET", None)


def _fuzz_operation(
    operation: Any, url: str, auths: list[dict[str, str]], tally: Tally, secrets: list[str]
) -> Any:
    name = f"{operation.method.upper()} {operation.path}"

    @SETTINGS
    @given(case=operation.as_strategy(), auth=st.sampled_from(auths))
    def run(case: Any, auth: dict[str, str]) -> None:
        response = case.call(base_url=url, headers=auth, timeout=30)
        tally.check(name, response, secrets)

    return run


def test_schemathesis_every_operation_no_5xx_no_key_in_a_body(served: tuple[str, str]) -> None:
    url, key = served
    raw = httpx.get(url + "/openapi.json", headers={"X-API-Key": key}, trust_env=False)
    assert raw.status_code == 200
    schema = schemathesis.openapi.from_dict(raw.json())
    tally = Tally()
    operations = 0
    auth_variants = [{"X-API-Key": key}, {"X-API-Key": "wrong-" + key[:6]}, {}]
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1
        run = _fuzz_operation(operation, url, auth_variants, tally, [key, HOST_SECRET])
        run()
    print(f"schemathesis: {operations} operations, {tally.cases} cases, "
          f"{len(tally.server_errors)} 5xx, {len(tally.leaks)} leaks")  # fmt: skip
    assert operations >= 5  # /, /health, /info, /task_info, /rollout
    assert tally.cases >= operations
    assert tally.server_errors == []
    assert tally.leaks == []


def _loopback_url() -> st.SearchStrategy[str]:
    """Inference URLs that are malformed or point at loopback only (nothing leaves)."""
    tail = st.text(alphabet="0123456789:/[]v%.", max_size=12)
    return st.one_of(
        st.sampled_from([
            "http://127.0.0.1:9/v1", "http://127.0.0.1:99999", "http://[::1", "ftp://x",
            "http:///v1", "http://127.0.0.1:0/v1", "http://a b/v1", "https://", "",
        ]),
        tail.map(lambda t: "http://127.0.0.1:" + t),
        st.text(max_size=20),
    )  # fmt: skip


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)

POLICY_CONFIG = st.fixed_dictionaries(
    {"inference_url": _loopback_url()},
    optional={
        "model": st.one_of(st.text(max_size=10), st.integers(), st.none()),
        "temperature": NUMBERS,
        "max_tokens": NUMBERS,
        "timeout": NUMBERS,
        "api_key_env": st.sampled_from(["FUZZ_HOST_SECRET", "HOME", "", "PATH"]),
        "prompt": st.one_of(st.text(max_size=50), st.integers()),
    },
)


def _dumps(value: Any) -> str:
    # NaN and Infinity as Python's json writes them (many clients send these).
    return json.dumps(value, allow_nan=True)


def test_hypothesis_policy_config_is_4xx_never_5xx(served: tuple[str, str]) -> None:
    url, key = served
    tally = Tally()
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, trust_env=False) as client:

        @SETTINGS
        @given(config=POLICY_CONFIG, seed=st.integers(min_value=-5, max_value=405))
        def run(config: dict[str, Any], seed: int) -> None:
            body = {"run_id": "fuzz", "env": {"seed": seed}, "policy": {"config": config}}
            response = client.post(
                "/rollout", content=_dumps(body), headers={"content-type": "application/json"}
            )
            tally.check(f"config {config!r:.200}", response, [key, HOST_SECRET])
            floats = [v for v in config.values() if isinstance(v, float)]
            if response.status_code == 200 and any(not math.isfinite(v) for v in floats):
                # only the offline policy (no valid inference_url) may ignore these fields
                assert response.json().get("success_status") in ("success", "runtime_error")

        run()
    print(f"hypothesis policy.config: {tally.cases} cases, {len(tally.server_errors)} 5xx")
    assert tally.server_errors == []
    assert tally.leaks == []
