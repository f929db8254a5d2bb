"""Does a running task app keep the contract? :func:`check` asks it, :class:`CheckReport`
says what works and what does not, with reasons.

The engine of ``taskapp check`` and of the test kit's contract assertion:

>>> import taskapp
>>> report = taskapp.check("http://127.0.0.1:8114", api_key="...", seeds=[0, 1])  # doctest: +SKIP
>>> report.ok                                                                     # doctest: +SKIP
True
>>> print(report.format())                                                        # doctest: +SKIP

The checks, in order (later ones are skipped when an earlier one makes them pointless,
e.g. nothing listening, or the key rejected):

* ``GET /`` answers ``{"status": "ok", ...}`` without a key;
* ``GET /health`` answers ``{"healthy": true}`` with the key;
* ``GET /health without key`` is refused (401/403, or synth-ai's 400 ``unauthorised``)
  with the error envelope (only when a key is given);
* ``GET /info`` has a ``service`` object, ``GET /task_info`` a ``taskset``;
* ``POST /rollout seed N`` for each seed: an answer with a score;
* ``error envelope``: a malformed rollout request is answered 4xx with a JSON ``detail``;
* ``key not echoed``: the API key and the worker token appear in no answer (rollout
  answers included).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from taskapp.core.client import (
    Answer,
    RolloutOutcome,
    TaskAppClient,
    TransportError,
    is_key_rejection,
    normalize_url,
    rollout_request,
)
from taskapp.core.errors import ConfigurationError
from taskapp.core.secrets import fingerprint, register_secret

__all__ = ["CheckReport", "CheckResult", "acheck", "check"]

#: Statuses that make every later check repeat the same failure.
_STOPPING = (401, 403, 404, 405, 503)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check: its ``name`` (``"GET /health"``), whether it passed, and why."""

    name: str
    ok: bool
    detail: str
    status: int | None = None  # the HTTP status the check saw, if any
    ms: float | None = None  # how long the request took

    def format(self, width: int = 14) -> str:
        mark = "ok  " if self.ok else "FAIL"
        timing = f" ({self.ms:.0f} ms)" if self.ms is not None and self.ok else ""
        return f"  {mark} {self.name:<{width}} {self.detail}{timing}"


@dataclasses.dataclass
class CheckReport:
    """What :func:`check` found at ``url``."""

    url: str
    checks: list[CheckResult]
    key: str = "no key"  # the key's fingerprint, never the key

    @property
    def ok(self) -> bool:
        """True when every check passed (and at least one ran)."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.ok]

    def format(self) -> str:
        """One line per check (``ok`` or ``FAIL`` with the reason), then a verdict line."""
        lines = [check.format() for check in self.checks]
        failed = len(self.failures)
        if failed:
            lines.append(f"{failed} of {len(self.checks)} checks failed")
        else:
            lines.append("task app OK")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "key": self.key,
            "ok": self.ok,
            "checks": [dataclasses.asdict(check) for check in self.checks],
        }

    def __str__(self) -> str:
        return self.format()


def check(
    url: str,
    *,
    api_key: str | None = None,
    worker_token: str | None = None,
    seeds: Sequence[int] | None = None,
    timeout: float = 10.0,
) -> CheckReport:
    """Check the task app at ``url`` against the contract; never raises for what the app
    does wrong (that is in the report), only for bad arguments (ConfigurationError).

    ``url`` may omit the scheme (``127.0.0.1:8114`` means ``http://127.0.0.1:8114``).
    ``seeds`` run one rollout each (none by default: a rollout may cost model calls).
    ``timeout`` bounds each request, in seconds.
    """
    try:
        base_url = normalize_url(url)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    seed_list = _seed_list(seeds)
    register_secret(api_key)
    register_secret(worker_token)
    with TaskAppClient(base_url, api_key, worker_token=worker_token, timeout=timeout) as client:
        checks = _Checker(client, seed_list).run()
    return CheckReport(base_url, checks, key=fingerprint(api_key) if api_key else "no key")


async def acheck(
    url: str,
    *,
    api_key: str | None = None,
    worker_token: str | None = None,
    seeds: Sequence[int] | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - per request, as in check()
) -> CheckReport:
    """:func:`check` for async code: runs in a worker thread, the event loop stays free
    (so it may check an app served by the same loop)."""
    return await asyncio.to_thread(
        check, url, api_key=api_key, worker_token=worker_token, seeds=seeds, timeout=timeout
    )


def _seed_list(seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return []
    if isinstance(seeds, str | bytes):
        raise ConfigurationError(
            f"seeds must be a sequence of integers, got the string {seeds!r} "
            "(parse a spec like '0-4' with taskapp.core.seeds.parse_seeds)"
        )
    result: list[int] = []
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigurationError(f"seeds must be integers >= 0, got {seed!r}")
        result.append(seed)
    return result


class _Checker:
    def __init__(self, client: TaskAppClient, seeds: list[int]) -> None:
        self.client = client
        self.seeds = seeds
        self.answers: list[Answer] = []
        self.checks: list[CheckResult] = []

    def _get(self, path: str, *, auth: bool | None = True) -> Answer | str:
        try:
            answer = self.client.request("GET", path, auth=auth)
        except TransportError as exc:
            return str(exc)
        self.answers.append(answer)
        return answer

    def run(self) -> list[CheckResult]:
        root = self._get("/", auth=False)
        self.checks.append(_judge_root(root))
        if isinstance(root, str):
            return self.checks
        health = self._get("/health")
        if _container_health(health) and not self.checks[-1].ok and root.status == 404:
            self.checks[-1] = CheckResult(
                "GET /", True, "no root route (a synth-containers target)", 404
            )
        self.checks.append(self._judge_health(health))
        if isinstance(health, str) or health.status in _STOPPING or is_key_rejection(health):
            return self.checks
        if self.client.api_key:
            self.checks.append(self._without_key())
        for path, judge in (("/info", _judge_info), ("/task_info", _judge_task_info)):
            result = judge(self._get(path))
            if path == "/task_info" and not result.ok and result.status == 200:
                # a synth-containers container describes its tasks at GET /taskset
                container = _judge_taskset(self._get("/taskset"))
                result = container if container.ok else result
            self.checks.append(result)
        metadata = self._get("/metadata")
        if not isinstance(metadata, str) and metadata.status == 200:
            self.checks.append(_judge_metadata(metadata))
        for seed in self.seeds:
            self.checks.append(self._rollout(seed))
        self.checks.append(self._envelope())
        secrets = [s for s in (self.client.api_key, self.client.worker_token) if s]
        if secrets:
            self.checks.append(self._not_echoed(secrets))
        return self.checks

    def _judge_health(self, answer: Answer | str) -> CheckResult:
        name = "GET /health"
        if isinstance(answer, str):
            return CheckResult(name, False, answer)
        status, body, ms = answer.status, answer.body, answer.elapsed_s * 1000
        if (
            status == 200
            and isinstance(body, dict)
            and (
                body.get("healthy") is True or body.get("status") == "ok"  # synth-containers'
            )
        ):
            accepted = "key accepted" if self.client.api_key else "no key needed"
            return CheckResult(name, True, f"healthy, {accepted}", status, ms)
        if is_key_rejection(answer):
            if self.client.api_key:
                message = (
                    f"auth rejected (HTTP {status}): the app does not accept key "
                    f"{fingerprint(self.client.api_key)}; pass the key it was started with "
                    "(--api-key-env NAME or ENVIRONMENT_API_KEY)"
                )
            else:
                message = (
                    f"auth rejected (HTTP {status}): no API key was sent; pass --api-key-env "
                    "NAME or set ENVIRONMENT_API_KEY"
                )
            return CheckResult(name, False, message, status, ms)
        if status == 503 and "missing_api_key" in answer.text:
            return CheckResult(
                name,
                False,
                "the app has no API key configured (HTTP 503 missing_api_key): start it with "
                "ENVIRONMENT_API_KEY set",
                status,
                ms,
            )
        if status in (404, 405):
            return CheckResult(
                name,
                False,
                f"not a task app: GET /health answered {status} (a task app answers 200 "
                '{"healthy": true})',
                status,
                ms,
            )
        if body is None:
            return CheckResult(name, False, f"not a task app: {_not_json(answer)}", status, ms)
        return CheckResult(name, False, f"unhealthy: {answer.describe(100)}", status, ms)

    def _without_key(self) -> CheckResult:
        name = "GET /health without key"
        answer = self._get("/health", auth=False)
        if isinstance(answer, str):
            return CheckResult(name, False, answer)
        ms = answer.elapsed_s * 1000
        if answer.status == 200 and self.client.worker_token:
            return self._relay_adds_key(name)
        if answer.status == 200:
            return CheckResult(
                name,
                False,
                "answered 200 without a key: anyone who can reach the URL can run rollouts "
                "(was it built with require_api_key=False?)",
                200,
                ms,
            )
        if not is_key_rejection(answer):
            return CheckResult(
                name,
                False,
                f"expected 401 (missing key), got {answer.describe(100)}",
                answer.status,
                ms,
            )
        if answer.error_message() is None:
            return CheckResult(
                name,
                False,
                f"refused (HTTP {answer.status}) but not with the error envelope "
                '{"detail": {"error": {"code": ..., "message": ...}}}',
                answer.status,
                ms,
            )
        return CheckResult(
            name,
            True,
            f"refused with HTTP {answer.status}: {answer.error_message()}",
            answer.status,
            ms,
        )

    def _relay_adds_key(self, name: str) -> CheckResult:
        """200 without the key, with a worker token: a relay that adds the app's key for
        callers holding the token. Then the token itself must be required."""
        answer = self._get("/health", auth=None)
        if isinstance(answer, str):
            return CheckResult(name, False, f"without key and worker token: {answer}")
        ms = answer.elapsed_s * 1000
        if answer.status in (401, 403) or is_key_rejection(answer):
            return CheckResult(
                name,
                True,
                f"the relay adds the key for worker-token holders; without the token it "
                f"refuses (HTTP {answer.status})",
                answer.status,
                ms,
            )
        return CheckResult(
            name,
            False,
            f"answered {answer.status} without the key and without the worker token: "
            "anyone who can reach the URL can run rollouts",
            answer.status,
            ms,
        )

    def _rollout(self, seed: int) -> CheckResult:
        name = f"POST /rollout seed {seed}"
        run_id = f"taskapp-check-{seed}"
        started = time.perf_counter()
        try:
            # Through request(), not rollout(): the answer is kept for "key not echoed".
            body = rollout_request(seed, run_id=run_id)
            answer = self.client.request("POST", "/rollout", json_body=body)
            answer = self.client.settle(answer, body, started)  # a container's async answer
        except TransportError as exc:
            outcome = RolloutOutcome.from_transport_error(
                exc, seed=seed, run_id=run_id, latency_s=time.perf_counter() - started
            )
        else:
            self.answers.append(answer)
            outcome = RolloutOutcome.from_answer(
                answer, seed=seed, run_id=run_id, latency_s=time.perf_counter() - started
            )
        ms = outcome.latency_s * 1000
        if outcome.score is None or outcome.status in ("runtime_error", "timeout"):
            return CheckResult(name, False, _outcome_problem(outcome), outcome.http_status, ms)
        return CheckResult(
            name,
            True,
            f"score {outcome.score:g} ({outcome.status}, from {outcome.score_field})",
            outcome.http_status,
            ms,
        )

    def _envelope(self) -> CheckResult:
        name = "error envelope"
        try:
            answer = self.client.request("POST", "/rollout", json_body=["not", "a", "rollout"])
        except TransportError as exc:
            return CheckResult(name, False, f"POST /rollout with a malformed body: {exc}")
        self.answers.append(answer)
        ms = answer.elapsed_s * 1000
        body = answer.body
        if 400 <= answer.status < 500 and isinstance(body, dict) and "detail" in body:
            said = answer.error_message() or "validation errors in detail"
            return CheckResult(
                name,
                True,
                f"a malformed rollout is answered HTTP {answer.status}: {said}",
                answer.status,
                ms,
            )
        if 400 <= answer.status < 500:
            problem = f"answered HTTP {answer.status} without a JSON 'detail' ({_kind(answer)})"
        else:
            problem = f"answered {answer.describe(100)}; expected 4xx with a JSON 'detail'"
        return CheckResult(
            name, False, f"a malformed POST /rollout body {problem}", answer.status, ms
        )

    def _not_echoed(self, secrets: list[str]) -> CheckResult:
        name = "key not echoed"
        for answer in self.answers:
            for secret in secrets:
                if secret.encode("utf-8") in answer.content or secret in str(dict(answer.headers)):
                    what = "API key" if secret == self.client.api_key else "worker token"
                    return CheckResult(
                        name,
                        False,
                        f"the {what} ({fingerprint(secret)}) appears in the answer to "
                        f"{answer.path or 'a request'} (HTTP {answer.status}): a secret must "
                        "never be echoed",
                        answer.status,
                    )
        return CheckResult(name, True, f"the key appears in none of {len(self.answers)} answers")


def _outcome_problem(outcome: RolloutOutcome) -> str:
    if outcome.status == "key_rejected":
        return f"key rejected: {outcome.error}"
    if outcome.status in ("runtime_error", "timeout") and outcome.score is not None:
        return f"the app reports success_status {outcome.status!r}: {outcome.error}"
    return f"{outcome.status}: {outcome.error}"


def _kind(answer: Answer) -> str:
    if answer.is_html():
        return "HTML"
    return "JSON without detail" if answer.body is not None else "not JSON"


def _not_json(answer: Answer) -> str:
    kind = "HTML" if answer.is_html() else "not JSON"
    return f"answered HTTP {answer.status} with {kind}"


def _judge_root(answer: Answer | str) -> CheckResult:
    name = "GET /"
    if isinstance(answer, str):
        return CheckResult(name, False, answer)
    body, ms = answer.body, answer.elapsed_s * 1000
    if answer.status == 200 and isinstance(body, dict) and body.get("status") == "ok":
        return CheckResult(name, True, f"task app {body.get('service')!r} is up", 200, ms)
    if answer.status == 200 and body is None:
        detail = _not_json(answer)
    else:
        detail = f"answered HTTP {answer.status} {_short(body)}"
    return CheckResult(
        name,
        False,
        f'not a task app root: {detail} (a task app answers {{"status": "ok", "service": ...}})',
        answer.status,
        ms,
    )


def _generic_failure(name: str, answer: Answer | str) -> CheckResult | None:
    if isinstance(answer, str):
        return CheckResult(name, False, answer)
    if answer.status == 200 and answer.body is not None:
        return None
    ms = answer.elapsed_s * 1000
    if answer.status == 200:
        return CheckResult(name, False, _not_json(answer), 200, ms)
    return CheckResult(name, False, answer.describe(100), answer.status, ms)


def _judge_info(answer: Answer | str) -> CheckResult:
    name = "GET /info"
    failure = _generic_failure(name, answer)
    if failure is not None or isinstance(answer, str):
        return failure or CheckResult(name, False, str(answer))
    body, ms = answer.body, answer.elapsed_s * 1000
    service = body.get("service") if isinstance(body, dict) else None
    runtime = body.get("runtime") if isinstance(body, dict) else None
    if not isinstance(service, dict) and isinstance(runtime, dict):
        label = runtime.get("name") or runtime.get("runtime_id")
        return CheckResult(name, True, f"synth-containers container {label!r}", 200, ms)
    if not isinstance(service, dict) and isinstance(body, dict) and body.get("target_id"):
        label = body["target_id"]
        return CheckResult(name, True, f"synth-containers target {label!r}", 200, ms)
    if not isinstance(service, dict):
        return CheckResult(name, False, "answered 200 but without a 'service' object", 200, ms)
    found = service.get("task")
    task: dict[str, Any] = found if isinstance(found, dict) else {}
    label = service.get("name") or task.get("name") or service.get("app_id") or task.get("id")
    app_id = service.get("app_id") or task.get("id")
    return CheckResult(name, True, f"service {label!r} (app_id {app_id!r})", 200, ms)


def _judge_task_info(answer: Answer | str) -> CheckResult:
    name = "GET /task_info"
    failure = _generic_failure(name, answer)
    if failure is not None or isinstance(answer, str):
        return failure or CheckResult(name, False, str(answer))
    body, ms = answer.body, answer.elapsed_s * 1000
    taskset = body.get("taskset") if isinstance(body, dict) else None
    if taskset is None:
        return CheckResult(name, False, "answered 200 but without a 'taskset'", 200, ms)
    splits = taskset.get("splits") if isinstance(taskset, dict) else None
    if isinstance(splits, dict) and splits:
        parts = []
        for split, value in splits.items():
            size = value.get("size") if isinstance(value, dict) else value
            size = len(size) if isinstance(size, list) else size
            parts.append(f"{split}={size}" if size is not None else str(split))
        described = "splits " + ", ".join(parts)
    else:
        described = "task set described"
    return CheckResult(name, True, described, 200, ms)


def _container_health(answer: Answer | str) -> bool:
    """``GET /health`` answered the way a synth-containers app does (``{"status": "ok"}``)."""
    return (
        not isinstance(answer, str)
        and answer.status == 200
        and isinstance(answer.body, dict)
        and answer.body.get("status") == "ok"
    )


def _judge_taskset(answer: Answer | str) -> CheckResult:
    """A synth-containers container's ``GET /taskset`` (when ``/task_info`` has no taskset)."""
    name = "GET /taskset"
    failure = _generic_failure(name, answer)
    if failure is not None or isinstance(answer, str):
        return failure or CheckResult(name, False, str(answer))
    body, ms = answer.body, answer.elapsed_s * 1000
    if not isinstance(body, dict):
        return CheckResult(name, False, "answered 200 but not with an object", 200, ms)
    splits = body.get("splits")
    names = list(splits) if isinstance(splits, dict | list) else []
    described = "splits " + ", ".join(map(str, names)) if names else "task set described"
    return CheckResult(name, True, f"{described} (synth-containers)", 200, ms)


def _judge_metadata(answer: Answer) -> CheckResult:
    """``GET /metadata``: which synth-containers optimizer contracts the app advertises."""
    name = "GET /metadata"
    body, ms = answer.body, answer.elapsed_s * 1000
    inner = body.get("metadata") if isinstance(body, dict) else None
    contracts = inner.get("optimizer_contracts") if isinstance(inner, dict) else None
    gepa = contracts.get("gepa") if isinstance(contracts, dict) else None
    if isinstance(gepa, dict):
        detail = (
            f"GEPA-ready container ({gepa.get('version')}, program {gepa.get('program_route')})"
        )
    else:
        detail = "synth-containers metadata, no GEPA contract (no mutable prompts declared)"
    return CheckResult(name, True, detail, 200, ms)


def _short(body: Any) -> str:
    text = json.dumps(body) if body is not None else ""
    return text if len(text) <= 100 else text[:97] + "..."
