"""The synth-containers contract, spoken by every task app (see docs/contract.md).

synth-containers 0.4.6 (the vendor's successor to synth-ai's task apps) serves
``/metadata``, ``/program``, ``/taskset``, ``/taskset/tasks`` and ``/rollouts`` (sync and
async, poll, terminate). :func:`taskapp.core.contract.create_task_app` serves the same routes
from a :class:`~taskapp.core.config.TaskAppConfig`; this module holds what they answer, with
no FastAPI import, so the shapes can be read (and tested) on their own:

* :func:`declared_prompts`: the texts an optimizer may change (``TaskAppConfig.prompts``,
  else the ``default_prompt``/``prompts`` the app advertises in ``base_task_info``);
* :func:`metadata_payload`, :func:`program_payload`, :func:`taskset_payload`,
  :func:`split_task_ids`: the discovery answers;
* :func:`container_fields` / :func:`apply_container_fields`: a ``/rollouts`` request
  (``candidate``, ``task_id``/``seed``, ``rollout_id``, ``submission_mode``) read onto a
  taskapp :class:`~taskapp.core.contract.RolloutRequest`;
* :func:`container_result`: a rollout's answer in both contracts at once;
* :class:`AsyncRollouts`: the bounded, expiring table of ``submission_mode: async`` rollouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

__all__ = [
    "CONTAINER_PROTOCOL",
    "GEPA_CONTRACT_VERSION",
    "MAX_CONTAINER_BODY",
    "PROGRAM_VERSION",
    "AsyncRollouts",
    "BodyLimit",
    "ContainerFields",
    "ContainerRequestError",
    "RolloutsFullError",
    "apply_container_fields",
    "container_fields",
    "container_result",
    "declared_prompts",
    "gepa_contract",
    "metadata_payload",
    "program_payload",
    "split_task_ids",
    "taskset_payload",
]

#: ``metadata.optimizer_contracts.gepa.version`` (synth-containers 0.4.6
#: ``vendored_gepa_contract.GEPA_OPTIMIZER_CONTRACT_VERSION``)
GEPA_CONTRACT_VERSION = "synth_optimizers.gepa.v2"
#: ``capabilities.protocol`` (synth-containers 0.4.6 ``metadata.CONTAINER_CONTRACT_PROTOCOL``)
CONTAINER_PROTOCOL = "synth.container.contract.v1"
#: ``capabilities.contract_version`` (synth-containers 0.4.6 ``ontology.CONTRACT_VERSION``)
CONTRACT_VERSION = "2026-05-28"
PROGRAM_VERSION = "prompt_program.v1"

#: request fields that make a ``POST /rollout`` a container request
CONTAINER_KEYS = frozenset(
    {"submission_mode", "candidate", "task_id", "seed", "rollout_id", "task_payload"}
)
#: the largest body ``/rollouts``, ``/rollouts/...`` and ``/taskset/tasks`` read (bytes)
MAX_CONTAINER_BODY = 8 * 1024 * 1024
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ROLLOUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_OUTPUT_KEYS = ("predicted", "prediction", "output", "answer", "completion")


class ContainerRequestError(ValueError):
    """A container request taskapp cannot read: ``code`` and ``message`` go in a 422."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RolloutsFullError(RuntimeError):
    """As many async rollouts as the app allows are running; retry after ``retry_after_s``."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        super().__init__(
            f"{limit} async rollouts are already running (TaskAppConfig.max_async_rollouts); "
            f"retry in {retry_after_s} s or raise the limit"
        )
        self.retry_after_s = retry_after_s


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- discovery ------------------------------------------------------------------------------


def declared_prompts(config: Any) -> dict[str, str]:
    """The mutable prompt texts of a task app: ``{candidate field: seed text}``.

    ``config.prompts`` when set; else what ``base_task_info.task_metadata`` advertises
    (``prompts``, a mapping, or ``default_prompt``, the text of ``policy.config["prompt"]``).
    A candidate field is a key of ``policy.config`` (taskapp's convention).

    >>> class C: prompts = None; base_task_info = {"task_metadata": {"default_prompt": "Hi"}}
    >>> declared_prompts(C())
    {'prompt': 'Hi'}
    """
    prompts = getattr(config, "prompts", None)
    if prompts is not None:
        return dict(prompts)
    base: Any = getattr(config, "base_task_info", None)
    if hasattr(base, "model_dump"):
        base = base.model_dump()
    metadata = base.get("task_metadata") if isinstance(base, Mapping) else None
    if not isinstance(metadata, Mapping):
        return {}
    found = metadata.get("prompts")
    if isinstance(found, Mapping):
        return {str(k): v for k, v in found.items() if isinstance(v, str) and v.strip()}
    default = metadata.get("default_prompt")
    if isinstance(default, str) and default.strip():
        return {"prompt": default}
    return {}


def gepa_contract() -> dict[str, str]:
    """``optimizer_contracts.gepa`` as synth-containers 0.4.6 advertises it."""
    return {
        "version": GEPA_CONTRACT_VERSION,
        "program_route": "/program",
        "taskset_route": "/taskset",
        "taskset_tasks_route": "/taskset/tasks",
        "rollout_route": "/rollouts",
    }


def metadata_payload(
    *, app_id: str, name: str, description: str, prompts: Mapping[str, str]
) -> dict[str, Any]:
    """``GET /metadata``: the shape of synth-containers 0.4.6 ``Container`` (composed by its
    ``metadata.compose_metadata_payload``). The GEPA contract is advertised only when the
    app declares prompts, as the vendor's SDK advertises it only when ``/program`` exists.
    """
    capabilities: dict[str, Any] = {
        "rollout_modes": ["blocking", "async"],
        "route_hints": {
            "metadata_routes": ["/metadata", "/info"],
            "task_info_routes": ["/task_info"],
            "program_routes": ["/program"],
            "taskset_routes": ["/taskset", "/taskset/tasks"],
            "rollout_routes": ["/rollouts", "/rollout"],
            "state_routes": ["/rollouts/{rollout_id}/state"],
        },
        "protocol": CONTAINER_PROTOCOL,
        "contract_version": CONTRACT_VERSION,
        "live_frames": "unsupported",
        "metadata": {"policy_ready": True, "program_ready": bool(prompts)},
    }
    payload: dict[str, Any] = {
        "runtime": {"runtime_id": app_id, "name": name, "description": description},
        "capabilities": capabilities,
        "metadata": {"served_by": "taskapp"},
    }
    if prompts:
        payload["metadata"]["optimizer_contracts"] = {"gepa": gepa_contract()}
        # the vendor's two transitional copies (its COMPAT through 2026-08)
        payload["optimizer_contracts"] = {"gepa": gepa_contract()}
        capabilities["optimizer_contracts"] = {"gepa": gepa_contract()}
    return payload


def program_payload(app_id: str, prompts: Mapping[str, str]) -> dict[str, Any]:
    """``GET /program``: a ``prompt_program.v1`` with one mutable module per prompt.

    >>> module = program_payload("demo", {"prompt": "Classify {message}"})["modules"][0]
    >>> module["template_variables"]
    ['message']
    """
    modules = []
    targets = []
    for field, text in prompts.items():
        variables = sorted(set(_PLACEHOLDER.findall(text.replace("{{", "").replace("}}", ""))))
        modules.append(
            {
                "module_id": field,
                "role": "system",
                "content": text,
                "mutable": True,
                "candidate_field": field,
                "template_variables": variables,
                "metadata": {"policy_config_key": field},
            }
        )
        targets.append(
            {
                "module_id": field,
                "candidate_field": field,
                "objective": "outcome_reward",
                "metadata": {},
            }
        )
    return {
        "version": PROGRAM_VERSION,
        "program_id": app_id,
        "modules": modules,
        "target_modules": targets,
        "seed_candidate": dict(prompts),
        "rollout_overlay_schema": {
            "candidate": {"type": "object", "properties": {f: {"type": "string"} for f in prompts}}
        },
        "metadata": {"candidate_travels_as": "policy.config"},
    }


def _split_seeds(taskset: Any) -> dict[str, list[int]]:
    splits = taskset.get("splits") if isinstance(taskset, Mapping) else None
    found: dict[str, list[int]] = {}
    if isinstance(splits, Mapping):
        for name, value in splits.items():
            seeds = value.get("seeds") if isinstance(value, Mapping) else value
            if isinstance(seeds, list) and all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds
            ):
                found[str(name)] = list(seeds)
    return found


def taskset_payload(app_id: str, taskset: Any) -> dict[str, Any]:
    """``GET /taskset``: the splits, their sizes and the app's own description under
    ``taskset``. Task ids are seeds written as strings."""
    from taskapp.core.seeds import known_seeds

    splits = _split_seeds(taskset)
    raw = taskset.get("splits") if isinstance(taskset, Mapping) else None
    sizes: dict[str, int] = {}
    if isinstance(raw, Mapping):
        for name, value in raw.items():
            size = value.get("size") if isinstance(value, Mapping) else value
            if isinstance(size, int) and not isinstance(size, bool):
                sizes[str(name)] = size
            elif str(name) in splits:
                sizes[str(name)] = len(splits[str(name)])
    every = known_seeds(taskset)
    default = taskset.get("default_split") if isinstance(taskset, Mapping) else None
    return {
        "taskset_id": app_id,
        "splits": sorted(sizes) or (["train"] if every else []),
        "split_sizes": sizes,
        "default_split": default if isinstance(default, str) else None,
        "task_count": len(every) if every is not None else None,
        "task_id_kind": "seed",
        "taskset": taskset,
    }


def split_task_ids(taskset: Any, split: str | None, limit: int = 10_000) -> list[str] | None:
    """The task ids (seeds as strings) of ``split`` (None or empty: every known seed); None
    when the task set does not say which seeds that split has.

    >>> split_task_ids({"splits": {"train": [0, 2], "test": [1]}}, "test")
    ['1']
    """
    from taskapp.core.seeds import known_seeds

    splits = _split_seeds(taskset)
    raw = taskset.get("splits") if isinstance(taskset, Mapping) else None
    seeds: list[int] | None
    if split and (splits or isinstance(raw, Mapping)):
        seeds = splits.get(split)
    else:
        every = known_seeds(taskset)
        seeds = sorted(every) if every is not None else None
    return None if seeds is None else [str(seed) for seed in seeds[:limit]]


# -- rollout requests and answers -----------------------------------------------------------


@dataclasses.dataclass
class ContainerFields:
    """What a container request says beyond taskapp's own rollout request."""

    rollout_id: str
    submission_mode: str = "sync"
    candidate: dict[str, str] = dataclasses.field(default_factory=dict)
    task_id: str | None = None


def _candidate(extra: Mapping[str, Any]) -> dict[str, str]:
    merged: dict[str, Any] = {}
    payload = extra.get("task_payload")
    overlay = extra.get("candidate_overlay")
    for source, where in (
        (payload.get("candidate") if isinstance(payload, Mapping) else None, "task_payload"),
        (overlay.get("candidate") if isinstance(overlay, Mapping) else None, "candidate_overlay"),
        (extra.get("candidate"), "request"),
    ):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            raise ContainerRequestError(
                "invalid_candidate", f"{where} candidate must be an object of field -> text"
            )
        merged.update(source)
    for field, text in merged.items():
        if not isinstance(text, str):
            raise ContainerRequestError(
                "invalid_candidate",
                f"candidate field {str(field)[:64]!r} must be a string, got {type(text).__name__}",
            )
    return {str(k): v for k, v in merged.items()}


def container_fields(body: Any, path: str) -> ContainerFields | None:
    """The container part of a rollout request, or None for a plain taskapp/synth-ai request
    on ``/rollout`` (answered exactly as before). Raises :class:`ContainerRequestError`."""
    extra: Mapping[str, Any] = body.model_extra or {}
    if path != "/rollouts" and not CONTAINER_KEYS.intersection(extra):
        return None
    mode = extra.get("submission_mode")
    mode = "sync" if mode is None else str(mode).strip().lower()
    if mode not in ("sync", "async"):
        raise ContainerRequestError(
            "invalid_submission_mode", "submission_mode must be one of: sync, async"
        )
    rollout_id = extra.get("rollout_id")
    if rollout_id is None:
        rollout_id = body.run_id
    if not isinstance(rollout_id, str) or not _ROLLOUT_ID.fullmatch(rollout_id):
        raise ContainerRequestError(
            "invalid_rollout_id",
            "rollout_id must be 1-128 letters, digits, '_', '.', ':' or '-' (starting with a "
            "letter or digit)",
        )
    task_id = extra.get("task_id")
    if task_id is not None and not isinstance(task_id, str | int):
        raise ContainerRequestError("invalid_task_id", "task_id must be a string")
    return ContainerFields(
        rollout_id=rollout_id,
        submission_mode=mode,
        candidate=_candidate(extra),
        task_id=None if task_id is None else str(task_id),
    )


def _seed_of(fields: ContainerFields, extra: Mapping[str, Any]) -> int | None:
    seed = extra.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    if seed is not None:
        raise ContainerRequestError("invalid_seed", "seed must be an integer")
    if fields.task_id is not None:
        text = fields.task_id.strip()
        if text.isdigit() and len(text) < 19:
            return int(text)
        raise ContainerRequestError(
            "unknown_task_id",
            f"task_id {fields.task_id[:64]!r} is not a task of this app: its task ids are "
            "seeds (see POST /taskset/tasks)",
        )
    return None


def apply_container_fields(body: Any, fields: ContainerFields) -> None:
    """Read the container fields onto taskapp's request: ``seed``/``task_id`` fill
    ``env.seed``, the candidate's fields become keys of ``policy.config`` (taskapp's
    convention), a vendor policy spec's ``model``/``inference_url`` fill the config's."""
    extra: Mapping[str, Any] = body.model_extra or {}
    if body.env.seed is None:
        body.env.seed = _seed_of(fields, extra)
    config = body.policy.config
    policy_extra: Mapping[str, Any] = body.policy.model_extra or {}
    for key in ("model", "inference_url"):
        value = policy_extra.get(key)
        if isinstance(value, str) and value and key not in config:
            config[key] = value
    config.update(fields.candidate)


def _objective_scores(payload: Mapping[str, Any], score: float) -> list[dict[str, Any]]:
    given = payload.get("objective_scores")
    if isinstance(given, list) and given:
        return given
    scores = [{"objective": "outcome_reward", "value": score, "source": "reward_info"}]
    reward = payload.get("reward_info")
    objectives = reward.get("outcome_objectives") if isinstance(reward, Mapping) else None
    if isinstance(objectives, Mapping):
        for name, value in objectives.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                scores.append(
                    {"objective": str(name), "value": float(value), "source": "outcome_objectives"}
                )
    return scores


def _side_info(details: Mapping[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    feedback = details.get("feedback")
    if isinstance(feedback, str) and feedback:
        info["feedback"] = feedback
    error = details.get("error")
    if isinstance(error, str) and error:
        info["error"] = error
    info["details"] = dict(details)
    return info


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def container_result(normalized: Mapping[str, Any], fields: ContainerFields) -> dict[str, Any]:
    """A rollout's answer in both contracts: taskapp's/synth-ai's fields (``run_id``,
    ``metrics``, ``reward_info``, ``success_status``...) plus synth-containers'
    (``rollout_id``, ``status``, ``objective_scores``, ``actionable_side_info``,
    ``summary``, ``task_id``, timestamps). Fields the app set itself are kept."""
    out = dict(normalized)
    metrics: Mapping[str, Any] = _as_mapping(out.get("metrics"))
    score = float(metrics.get("outcome_score", 0.0))
    details: Mapping[str, Any] = _as_mapping(metrics.get("details"))
    out["rollout_id"] = fields.rollout_id
    out.setdefault("status", "completed")
    if fields.task_id is not None:
        out.setdefault("task_id", fields.task_id)
    out["objective_scores"] = _objective_scores(out, score)
    out.setdefault("actionable_side_info", _side_info(details))
    summary = dict(out["summary"]) if isinstance(out.get("summary"), Mapping) else {}
    summary.setdefault("outcome_reward", score)
    for key in _OUTPUT_KEYS:
        if key in details and "output" not in summary:
            summary["output"] = details[key]
    out["summary"] = summary
    now = _now()
    out.setdefault("created_at", now)
    out.setdefault("updated_at", now)
    return out


# -- async rollouts -------------------------------------------------------------------------


@dataclasses.dataclass
class _Record:
    payload: dict[str, Any]
    task: asyncio.Task[None] | None = None
    finished_at: float | None = None


_STATE_KEYS = (
    "rollout_id",
    "status",
    "success_status",
    "status_detail",
    "created_at",
    "updated_at",
    "summary",
    "metadata",
)


class AsyncRollouts:
    """The ``submission_mode: async`` rollouts of one app.

    At most ``limit`` run at once (one more is :class:`RolloutsFullError`, answered 429 with
    ``Retry-After``); a finished record is kept ``ttl_s`` seconds and at most ``4 * limit``
    of them (oldest dropped first); :meth:`terminate` cancels a running one and waits for it
    (at most ``grace_s``); :meth:`aclose` (the app's shutdown) cancels every one still
    running, so none outlives the app.
    """

    def __init__(self, limit: int, ttl_s: float, grace_s: float = 1.0) -> None:
        self.limit = limit
        self.ttl_s = ttl_s
        self.grace_s = grace_s
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._running = 0
        self._closed = False

    @property
    def running(self) -> int:
        return self._running

    def _prune(self) -> None:
        now = time.monotonic()
        finished = [key for key, record in self._records.items() if record.finished_at is not None]
        excess = len(finished) - 4 * self.limit
        for key in finished:
            record = self._records[key]
            assert record.finished_at is not None
            if excess > 0 or now - record.finished_at > self.ttl_s:
                del self._records[key]
                excess -= 1

    def submit(
        self,
        rollout_id: str,
        work: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
        timeout_s: float,
    ) -> dict[str, Any]:
        """Start ``work()`` as rollout ``rollout_id``; returns the ``running`` record."""
        self._prune()
        if self._closed:
            raise RolloutsFullError(0, retry_after_s=5)
        existing = self._records.get(rollout_id)
        if existing is not None:
            raise ContainerRequestError(
                "rollout_exists", f"a rollout with id {rollout_id!r} exists; use a new rollout_id"
            )
        if self._running >= self.limit:
            raise RolloutsFullError(self.limit)
        now = _now()
        record = _Record(
            payload={
                "rollout_id": rollout_id,
                "status": "running",
                "success_status": "running",
                "created_at": now,
                "updated_at": now,
                "summary": {},
                "metadata": {"submission_mode": "async"},
            }
        )
        self._records[rollout_id] = record
        self._running += 1
        record.task = asyncio.create_task(self._run(record, work, timeout_s))
        return dict(record.payload)

    async def _run(
        self,
        record: _Record,
        work: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
        timeout_s: float,
    ) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                result = await work()
            self._finish(record, {**result, "created_at": record.payload["created_at"]})
        except TimeoutError:
            self._fail(record, "timeout", f"the rollout ran longer than {timeout_s:g} s")
        except asyncio.CancelledError:
            if record.finished_at is None:
                self._fail(record, "terminated", "terminated")
            raise
        except ContainerRequestError as exc:
            self._fail(record, "failed", f"{exc.code}: {exc.message}")
        except Exception as exc:  # the record says what happened
            self._fail(record, "failed", f"the rollout raised {type(exc).__name__}")

    def _finish(self, record: _Record, payload: dict[str, Any]) -> None:
        if record.finished_at is not None:
            return
        record.payload = {**payload, "updated_at": _now()}
        record.finished_at = time.monotonic()
        self._running -= 1

    def _fail(self, record: _Record, status: str, detail: str) -> None:
        success = {"terminated": "cancelled", "timeout": "timeout"}.get(status, "runtime_error")
        self._finish(
            record,
            {
                **record.payload,
                "status": status,
                "success_status": success,
                "status_detail": detail,
            },
        )

    def get(self, rollout_id: str) -> dict[str, Any] | None:
        self._prune()
        record = self._records.get(rollout_id)
        return None if record is None else dict(record.payload)

    def state(self, rollout_id: str) -> dict[str, Any] | None:
        payload = self.get(rollout_id)
        if payload is None:
            return None
        state = {key: payload[key] for key in _STATE_KEYS if key in payload}
        state.setdefault("status_detail", "")
        state.setdefault("summary", {})
        state.setdefault("metadata", {})
        return state

    async def terminate(self, rollout_id: str) -> dict[str, Any] | None:
        """Cancel a running rollout and wait (at most ``grace_s``) until it has let go; a
        finished one is left as it is. None when there is no such rollout."""
        record = self._records.get(rollout_id)
        if record is None:
            return None
        task = record.task
        if record.finished_at is None:
            self._fail(record, "terminated", "terminated")
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=self.grace_s)
        return self.state(rollout_id)

    async def aclose(self) -> None:
        """Cancel every running rollout (the app is stopping)."""
        self._closed = True
        tasks = [r.task for r in self._records.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(self.grace_s, 2.0))
        self._records.clear()


# -- body limit -----------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes on the container routes (``/rollouts``,
    ``/rollouts/...``, ``/taskset/tasks``) is answered 413 in the error envelope, whether
    its ``Content-Length`` says so up front or a chunked body grows past it. Other routes
    pass untouched (``/rollout`` keeps what it accepted before)."""

    def __init__(self, app: Any, limit: int = MAX_CONTAINER_BODY) -> None:
        self.app = app
        self.limit = limit

    @staticmethod
    def applies(path: str) -> bool:
        return path == "/taskset/tasks" or path == "/rollouts" or path.startswith("/rollouts/")

    async def _refuse(self, send: Any) -> None:
        import json

        body = json.dumps(
            {
                "detail": {
                    "error": {
                        "code": "body_too_large",
                        "message": f"the request body is over {self.limit} bytes",
                    }
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(send)
                return
        seen = 0
        exceeded = False
        started = False

        async def limited() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a body it never got whole is dropped
            started |= message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, tracked)
        if exceeded and not started:
            await self._refuse(send)
