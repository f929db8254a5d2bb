"""``taskapp jobs list|show|submit|pause|resume|stop|cancel|retry|delete|logs``: watch and
steer jobs of ``taskapp backend serve``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EPILOG = """examples:
  taskapp jobs list --api-key-file backend.key
  taskapp jobs show pl_0123456789abcdef --api-key-file backend.key --json
  taskapp jobs logs pl_0123456789abcdef --follow --api-key-file backend.key
  taskapp jobs cancel pl_0123456789abcdef --api-key-file backend.key
  taskapp jobs submit examples/support_intents_gepa.toml --task-app-url http://127.0.0.1:8114
  taskapp jobs pause pl_0123456789abcdef        # at the next iteration; `resume` goes on
  taskapp jobs stop pl_0123456789abcdef         # end now with the best so far (succeeded)
  taskapp jobs retry pl_0123456789abcdef        # a failed or cancelled job, from its checkpoint
  taskapp jobs delete pl_0123456789abcdef       # a finished job
  taskapp jobs list --status failed,cancelled --since 2026-12-01 --all

The backend URL comes from --backend-url, else $TASKAPP_BACKEND_URL, else
http://127.0.0.1:8000; the key from --api-key-file (mode 0600), else
$TASKAPP_BACKEND_API_KEY. With --db PATH|URL the commands use the job database directly
(no backend, no key): `taskapp jobs list --db postgresql://taskapp@db-host/taskapp`.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="submit, list, steer (pause, stop, cancel, retry) and follow prompt-learning jobs",
        description="Talk to a `taskapp backend serve`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend-url", help="the backend (default: see below)")
    common.add_argument(
        "--api-key-file", type=Path, metavar="F", help="the backend key file (mode 0600)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument(
        "--db",
        metavar="PATH|URL",
        help="use the job database directly instead of a backend's API (a SQLite file or "
        "postgresql://...; no key needed)",
    )
    commands = parser.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND")
    listing = commands.add_parser("list", parents=[common], help="the newest jobs")
    listing.add_argument("--limit", type=int, default=20, help="how many (20; 1..500)")
    listing.add_argument("--status", help="only jobs with this status (comma-separated)")
    listing.add_argument("--since", help="created at or after (Unix seconds or ISO 8601)")
    listing.add_argument("--until", help="created before (Unix seconds or ISO 8601)")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.set_defaults(run=run_list)
    submit = commands.add_parser("submit", parents=[common], help="submit a [prompt_learning] TOML")
    submit.add_argument("config", type=Path, metavar="CONFIG.toml")
    submit.add_argument("--task-app-url", help="the task app (default: the config's task_app_url)")
    submit.add_argument(
        "--idempotency-key",
        help="send this Idempotency-Key (the same key and file give the same job)",
    )
    submit.set_defaults(run=run_submit)
    for name, helptext, handler in (
        ("show", "one job: status, scores, best prompt", run_show),
        ("cancel", "stop a job without a result (within seconds)", run_control),
        ("pause", "pause a job at its next iteration (resume goes on)", run_control),
        ("resume", "queue a paused job again", run_control),
        ("stop", "end a job now with the best so far (succeeded)", run_control),
        ("retry", "queue a failed or cancelled job again", run_control),
        ("delete", "delete a finished job", run_delete),
        ("logs", "a job's events", run_logs),
    ):
        sub = commands.add_parser(name, parents=[common], help=helptext)
        sub.add_argument("job_id", metavar="JOB_ID")
        if name == "logs":
            sub.add_argument(
                "--follow", "-f", action="store_true", help="stream until the job is done"
            )
        sub.set_defaults(run=handler)
    parser.set_defaults(run=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


class _Backend:
    def __init__(self, args: argparse.Namespace) -> None:
        from taskapp.cli._common import UsageError
        from taskapp.core.errors import ConfigurationError
        from taskapp.jobs.backend import read_api_key

        self.direct: Any = None
        if getattr(args, "db", None):
            self._open_direct(args.db)
            return
        self.url = (
            args.backend_url or os.environ.get("TASKAPP_BACKEND_URL") or "http://127.0.0.1:8000"
        ).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            self.url = "http://" + self.url
        try:
            key = read_api_key(args.api_key_file)
        except ConfigurationError as exc:
            raise UsageError(exc.message) from None
        self.headers = {"Authorization": f"Bearer {key}"}

    def _open_direct(self, db: str) -> None:
        """``--db``: the API served in this process over the database (no workers), with
        a key that never leaves it."""
        import secrets

        from taskapp.jobs.service import create_backend_app
        from taskapp.jobs.store import open_store

        key = secrets.token_hex(24)
        self.direct = create_backend_app(open_store(db), None, key)
        self.url = "http://taskapp-db"
        self.headers = {"Authorization": f"Bearer {key}"}

    def _call_direct(self, method: str, path: str, **kw: Any) -> Any:
        import asyncio

        import httpx

        from taskapp.core.transport import async_http_client

        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.direct)
            async with async_http_client(transport=transport, base_url=self.url) as client:
                return await client.request(method, path, **kw)

        return asyncio.run(call())

    def request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        from taskapp.core.transport import http_client
        from taskapp.jobs.client import JobBackendError

        headers = {**self.headers, **kw.pop("headers", {})}
        try:
            if self.direct is not None:
                response = self._call_direct(method, path, headers=headers, **kw)
            else:
                with http_client(timeout=30, trust_env=False) as client:
                    response = client.request(method, self.url + path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise JobBackendError(
                f"cannot reach the job backend at {self.url} ({type(exc).__name__}); is "
                "`taskapp backend serve` running there?"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            raise JobBackendError(
                f"the backend answered {response.status_code}: {message or response.text[:200]}"
            )
        return data


def _score(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_list(args: argparse.Namespace) -> int:
    backend = _Backend(args)
    params = {"limit": args.limit, "status": args.status, "since": args.since,
              "until": args.until}  # fmt: skip
    data = backend.request("GET", "/api/jobs", params={k: v for k, v in params.items() if v})
    jobs = list(data["jobs"])
    while args.all and data.get("next_cursor"):
        params["cursor"] = data["next_cursor"]
        data = backend.request("GET", "/api/jobs", params={k: v for k, v in params.items() if v})
        jobs += data["jobs"]
    if args.json:
        print(json.dumps({**data, "jobs": jobs}, indent=2))
        return 0
    print(f"{'JOB':<20} {'STATUS':<10} {'BASELINE':>8} {'BEST':>8} {'ROLLOUTS':>10}  CREATED")
    for job in jobs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created_at"]))
        rollouts = f"{job['metric_calls']}/{job['budget'] or '?'}"
        print(
            f"{job['id']:<20} {job['status']:<10} {_score(job['baseline_score']):>8} "
            f"{_score(job['best_score']):>8} {rollouts:>10}  {created}"
        )
    print(f"({len(jobs)} of {data['total']} jobs)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    backend = _Backend(args)
    data = backend.request("GET", f"/api/jobs/{args.job_id}/result")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    job, result = data["job"], data["result"]
    print(f"job {job['id']}: {job['status']}")
    print(f"task app: {job['task_app_url']}")
    print(
        f"val score: {_score(job['baseline_score'])} -> {_score(job['best_score'])}; "
        f"{job['metric_calls']}/{job['budget']} rollouts; attempts {job['attempts']}"
    )
    if job.get("error"):
        print(f"error: {job['error']}")
    if result:
        print("best prompt:")
        print(str(result.get("best_prompt", "")).rstrip("\n"))
    elif data.get("best_so_far"):
        best = data["best_so_far"]
        print(f"best prompt so far (candidate {best.get('candidate')}, score "
              f"{_score(best.get('score'))}):")  # fmt: skip
        for name, text in (best.get("texts") or {}).items():
            print(f"[{name}]" if len(best["texts"]) > 1 else "", end="")
            print(str(text).rstrip("\n"))
    return 0 if job["status"] != "failed" else 1


def run_submit(args: argparse.Namespace) -> int:
    from taskapp.jobs.client import PromptLearningJob

    backend = _Backend(args)
    client = PromptLearningJob(backend.url, backend.headers["Authorization"][7:])
    from taskapp.cli._common import stderr

    with _quiet_client_log():
        if backend.direct is not None:  # --db: straight into the database's queue
            import uuid

            body = client._body(args.config, args.task_app_url, None, None, None)
            key = args.idempotency_key or uuid.uuid4().hex
            job_id = str(
                backend.request("POST", "/api/jobs", json=body, headers={"Idempotency-Key": key})[
                    "id"
                ]
            )
        else:
            job_id = client.submit_sync(
                args.config, task_app_url=args.task_app_url, idempotency_key=args.idempotency_key
            )
    for warning in client.warnings:
        stderr(f"taskapp jobs submit: warning: {args.config}: {warning}")
    if args.json:
        print(json.dumps({"id": job_id}))
    else:
        print(job_id)
    return 0


@contextlib.contextmanager
def _quiet_client_log() -> Iterator[None]:
    """The CLI prints the config's warnings itself (once, in its own words)."""
    import logging

    log = logging.getLogger("taskapp.jobs")
    previous = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(previous)


_PENDING = {
    "cancel": "cancelling (stops after its current step)",
    "pause": "pausing (stops after its current iteration)",
    "stop": "stopping (ends after its current step with the best so far)",
}


def run_control(args: argparse.Namespace) -> int:
    action = args.jobs_command
    backend = _Backend(args)
    job = backend.request("POST", f"/api/jobs/{args.job_id}/{action}")
    if args.json:
        print(json.dumps(job, indent=2))
    elif job["status"] == "running" and job.get("control") == action:
        print(f"job {job['id']}: {_PENDING[action]}")
    elif action == "cancel" and job["status"] not in ("cancelled", "running"):
        print(f"job {job['id']}: already {job['status']}")
    else:
        print(f"job {job['id']}: {job['status']}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    backend = _Backend(args)
    data = backend.request("DELETE", f"/api/jobs/{args.job_id}")
    print(json.dumps(data) if args.json else f"job {args.job_id}: deleted")
    return 0


def _line(event: dict[str, Any]) -> str:
    data = event["data"]
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    kind = event["kind"]
    if kind in ("baseline", "iteration", "stopped", "candidate"):
        detail = ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in data.items()
            if k not in ("event", "val_scores", "candidate", "prompt") and v is not None
        )
    else:
        detail = ", ".join(f"{k}={v}" for k, v in data.items())
    return f"{stamp} #{event['seq']:<4} {kind:<16} {detail}"


class _Bar:
    """``[#####.....] 120/200 rollouts  best 0.812 (baseline 0.500)`` on stderr."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.baseline: float | None = None

    def update(self, event: dict[str, Any]) -> None:
        data = event["data"]
        if event["kind"] == "baseline":
            self.baseline = data.get("score")
        calls, budget = data.get("metric_calls"), data.get("budget")
        if not isinstance(calls, int) or not isinstance(budget, int) or budget <= 0:
            return
        width = 30
        filled = min(width, round(width * calls / budget))
        base = f" (baseline {self.baseline:.3f})" if self.baseline is not None else ""
        best = data.get("best_score")
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {calls}/{budget} rollouts"
            f"  best {_score(best)}{base}"
        )
        end = "\r" if self.tty else "\n"
        print(text, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def run_logs(args: argparse.Namespace) -> int:
    backend = _Backend(args)
    if not args.follow:
        after = 0
        while True:
            page = backend.request("GET", f"/api/jobs/{args.job_id}/events?after={after}")
            for event in page["events"]:
                print(json.dumps(event) if args.json else _line(event))
            if not page["events"]:
                return 0
            after = page["next_after"]
    return _follow(backend, args)


def _follow_direct(backend: _Backend, args: argparse.Namespace) -> int:
    """``logs --follow --db``: read the events from the database until the job is done."""
    bar = _Bar()
    after, status = 0, None
    try:
        while True:
            page = backend.request("GET", f"/api/jobs/{args.job_id}/events?after={after}")
            for event in page["events"]:
                if bar.tty and not args.json:
                    bar.close()
                print(json.dumps(event) if args.json else _line(event), flush=True)
                bar.update(event)
            after = page["next_after"]
            if not page["events"] and page["status"] in ("succeeded", "failed", "cancelled"):
                status = page["status"]
                break
            if not page["events"]:
                time.sleep(0.5)
    finally:
        bar.close()
    print(f"job {args.job_id}: {status}", file=sys.stderr)
    return 0 if status in ("succeeded", "cancelled") else 1


#: seconds ``logs --follow`` keeps reconnecting to a backend that went away (a restart)
RECONNECT_FOR = 120.0


def _follow(backend: _Backend, args: argparse.Namespace) -> int:
    """Stream the job's events until it is done; through a backend restart, reconnect
    (from the last event seen) for up to :data:`RECONNECT_FOR` seconds, saying so."""
    if backend.direct is not None:
        return _follow_direct(backend, args)
    from taskapp.jobs.client import BackendUnreachableError, JobBackendError

    bar = _Bar()
    status: str | None = None
    after = 0
    lost_at: float | None = None
    try:
        while status is None:
            try:
                status, after = _stream_once(backend, args, bar, after)
            except BackendUnreachableError as exc:
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    bar.close()
                    print(f"taskapp jobs: {exc.message}; reconnecting for up to "
                          f"{RECONNECT_FOR:g} s", file=sys.stderr)  # fmt: skip
                if now - lost_at >= RECONNECT_FOR:
                    raise JobBackendError(
                        f"{exc.message} (gave up after {RECONNECT_FOR:g} s)"
                    ) from None
                time.sleep(1.0)
                continue
            if lost_at is not None:
                print("taskapp jobs: reconnected", file=sys.stderr)
                lost_at = None
    finally:
        bar.close()
    print(f"job {args.job_id}: {status}", file=sys.stderr)
    return 0 if status in ("succeeded", "cancelled") else 1


def _stream_once(
    backend: _Backend, args: argparse.Namespace, bar: Any, after: int
) -> tuple[str | None, int]:
    """One connection to the event stream: (the final status, or None when the stream
    ended early; the last event's seq). A refused connection, a dropped stream or a
    502/503/504 is :class:`BackendUnreachableError`."""
    import httpx

    from taskapp.core.transport import http_client
    from taskapp.jobs.client import BackendUnreachableError, JobBackendError

    try:
        with (
            http_client(timeout=httpx.Timeout(30, read=None), trust_env=False) as client,
            client.stream(
                "GET",
                f"{backend.url}/api/jobs/{args.job_id}/events/stream?after={after}",
                headers=backend.headers,
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                kind = (
                    BackendUnreachableError
                    if response.status_code in (502, 503, 504)
                    else JobBackendError
                )
                raise kind(f"the backend answered {response.status_code}: {_message(response)}")
            kind_of_event = None
            for raw in response.iter_lines():
                if raw.startswith("event: "):
                    kind_of_event = raw[7:]
                elif raw.startswith("data: "):
                    payload = json.loads(raw[6:])
                    if kind_of_event == "end":
                        return str(payload.get("status")), after
                    after = max(after, int(payload.get("seq") or after))
                    if bar.tty and not args.json:
                        bar.close()
                    print(json.dumps(payload) if args.json else _line(payload), flush=True)
                    bar.update(payload)
    except httpx.HTTPError as exc:
        raise BackendUnreachableError(
            f"lost the event stream of {backend.url} ({type(exc).__name__})"
        ) from None
    raise BackendUnreachableError(f"the event stream of {backend.url} ended early")


def _message(response: Any) -> str:
    from taskapp.jobs.client import _error_message

    try:
        return _error_message(response.json()) or response.text[:200]
    except ValueError:
        return str(response.text[:200])
