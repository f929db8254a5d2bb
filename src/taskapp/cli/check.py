"""``taskapp check URL``: is a task app answering there, and does it accept the key?"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Any

from taskapp.cli import EXIT_FAILED, EXIT_OK, UsageError
from taskapp.cli._common import (
    add_key_arguments,
    add_worker_token_argument,
    describe_transport_error,
    error_message,
    resolve_api_key,
    worker_token_headers,
)

EPILOG = """examples:
  taskapp check http://127.0.0.1:8114                   key from ENVIRONMENT_API_KEY
  taskapp check https://tasks.example.com --api-key-env TASK_APP_KEY
  taskapp check http://127.0.0.1:8114 --json            machine-readable

Checks GET / (no key), then /health, /info and /task_info with the key, and says what
works and what does not: connection refused, timeout, TLS, not a task app, key rejected,
no key configured on the app. Exit status 0 when every check passes, 1 otherwise.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that a running task app answers /health, /info and /task_info",
        description=(
            "Call /, /health, /info and /task_info of a running task app (local or remote) "
            "and report what works and what does not, with reasons."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="base URL of the task app")
    add_key_arguments(parser, what="the task app's API key")
    add_worker_token_argument(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time limit of each request (default 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


@dataclasses.dataclass
class Check:
    path: str
    ok: bool
    message: str
    status: int | None = None
    ms: float | None = None


def run(args: argparse.Namespace) -> int:
    import httpx

    from taskapp.core.health import auth_headers, is_loopback_url

    try:
        parsed = httpx.URL(args.url)
    except Exception as exc:
        raise UsageError(f"{args.url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"{args.url!r}: expected http://host[:port] or https://host")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise UsageError(f"--timeout must be positive and finite, got {args.timeout}")
    url = args.url.rstrip("/")
    key = resolve_api_key(args)
    relay_headers = worker_token_headers(args)
    checks: list[Check] = []
    with httpx.Client(
        base_url=url,
        timeout=args.timeout,
        trust_env=not is_loopback_url(url),
        headers=relay_headers,
    ) as client:
        root = _request(client, "/", {}, url, args.timeout)
        checks.append(_judge_root(root))
        if root.error is None:
            headers = auth_headers(key.value)
            health = _request(client, "/health", headers, url, args.timeout)
            checks.append(_judge_health(health, key.fingerprint, key.value is not None))
            # A rejected key or a missing route fails /info and /task_info the same way.
            if health.error is None and health.status not in (401, 403, 404, 405, 503):
                for path, judge in (("/info", _judge_info), ("/task_info", _judge_task_info)):
                    checks.append(judge(_request(client, path, headers, url, args.timeout)))
    failed = [check for check in checks if not check.ok]
    if args.json:
        print(
            json.dumps(
                {
                    "url": url,
                    "key": key.fingerprint,
                    "ok": not failed,
                    "checks": [dataclasses.asdict(check) for check in checks],
                },
                indent=2,
            )
        )
    else:
        described = f"key {key.fingerprint} from {key.source}" if key.value else "no API key"
        print(f"checking {url} ({described})")
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            timing = f" ({check.ms:.0f} ms)" if check.ms is not None and check.ok else ""
            print(f"  {mark} GET {check.path:<11}{check.message}{timing}")
        if failed:
            print(f"{len(failed)} of {len(checks)} checks failed")
        else:
            print("task app OK")
    return EXIT_FAILED if failed else EXIT_OK


@dataclasses.dataclass
class _Answer:
    path: str
    status: int | None
    body: Any
    ms: float
    error: str | None = None
    text: str = ""


def _request(client: Any, path: str, headers: dict[str, str], url: str, timeout: float) -> _Answer:
    import httpx

    started = time.perf_counter()
    try:
        response = client.get(path, headers=headers)
    except httpx.HTTPError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return _Answer(path, None, None, elapsed, describe_transport_error(exc, url, timeout))
    elapsed = (time.perf_counter() - started) * 1000
    try:
        body = response.json()
    except ValueError:
        body = None
    return _Answer(path, response.status_code, body, elapsed, text=response.text[:120])


def _not_json(answer: _Answer) -> str:
    kind = "HTML" if answer.text.lstrip().lower().startswith(("<!doctype", "<html")) else "not JSON"
    return f"answered HTTP {answer.status} with {kind}"


def _judge_root(answer: _Answer) -> Check:
    if answer.error is not None:
        return Check("/", False, answer.error, None)
    body = answer.body
    if answer.status == 200 and isinstance(body, dict) and body.get("status") == "ok":
        service = body.get("service")
        return Check("/", True, f"task app {service!r} is up", 200, answer.ms)
    if answer.status == 200 and body is None:
        detail = _not_json(answer)
    else:
        detail = f"answered HTTP {answer.status} {_short(body)}"
    return Check(
        "/",
        False,
        f'not a task app root: {detail} (a task app answers {{"status": "ok", "service": ...}})',
        answer.status,
        answer.ms,
    )


def _judge_health(answer: _Answer, key_fingerprint: str, have_key: bool) -> Check:
    if answer.error is not None:
        return Check("/health", False, answer.error)
    status, body = answer.status, answer.body
    if status == 200 and isinstance(body, dict) and body.get("healthy") is True:
        return Check("/health", True, "healthy, key accepted", status, answer.ms)
    if status in (401, 403):
        if have_key:
            message = (
                f"auth rejected (HTTP {status}): the app does not accept key "
                f"{key_fingerprint}; pass the key it was started with (--api-key-env NAME "
                "or ENVIRONMENT_API_KEY)"
            )
        else:
            message = (
                f"auth rejected (HTTP {status}): no API key was sent; pass --api-key-env "
                "NAME or set ENVIRONMENT_API_KEY"
            )
        return Check("/health", False, message, status, answer.ms)
    if status == 503 and "missing_api_key" in json.dumps(body):
        return Check(
            "/health",
            False,
            "the app has no API key configured (HTTP 503 missing_api_key): start it with "
            "ENVIRONMENT_API_KEY set",
            status,
            answer.ms,
        )
    if status in (404, 405):
        return Check(
            "/health",
            False,
            f"not a task app: GET /health answered {status} (a task app answers 200 "
            '{"healthy": true})',
            status,
            answer.ms,
        )
    if body is None:
        return Check("/health", False, f"not a task app: {_not_json(answer)}", status, answer.ms)
    reason = error_message(body) or _short(body)
    return Check("/health", False, f"unhealthy: HTTP {status} {reason}", status, answer.ms)


def _judge_info(answer: _Answer) -> Check:
    failure = _generic_failure(answer)
    if failure is not None:
        return failure
    body = answer.body
    service = body.get("service") if isinstance(body, dict) else None
    if not isinstance(service, dict):
        return Check("/info", False, "answered 200 but without a 'service' object", 200)
    name = service.get("name") or service.get("app_id")
    return Check(
        "/info", True, f"service {name!r} (app_id {service.get('app_id')!r})", 200, answer.ms
    )


def _judge_task_info(answer: _Answer) -> Check:
    failure = _generic_failure(answer)
    if failure is not None:
        return failure
    body = answer.body
    taskset = body.get("taskset") if isinstance(body, dict) else None
    if taskset is None:
        return Check("/task_info", False, "answered 200 but without a 'taskset'", 200)
    splits = taskset.get("splits") if isinstance(taskset, dict) else None
    if isinstance(splits, dict) and splits:
        parts = []
        for name, value in splits.items():
            size = value.get("size") if isinstance(value, dict) else value
            size = len(size) if isinstance(size, list) else size
            parts.append(f"{name}={size}" if size is not None else str(name))
        described = "splits " + ", ".join(parts)
    else:
        described = "task set described"
    return Check("/task_info", True, described, 200, answer.ms)


def _generic_failure(answer: _Answer) -> Check | None:
    if answer.error is not None:
        return Check(answer.path, False, answer.error)
    if answer.status == 200 and answer.body is not None:
        return None
    if answer.status == 200:
        return Check(answer.path, False, _not_json(answer), 200, answer.ms)
    reason = error_message(answer.body) or _short(answer.body)
    return Check(answer.path, False, f"HTTP {answer.status} {reason}", answer.status, answer.ms)


def _short(body: Any) -> str:
    text = json.dumps(body) if body is not None else ""
    return text if len(text) <= 100 else text[:97] + "..."
