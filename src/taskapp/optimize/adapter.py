"""The GEPA adapter: evaluates candidate prompts through a task app's ``POST /rollout``.

gepa's loop is sequential; all concurrency lives here. One task-app client
(:class:`taskapp.core.client.TaskAppClient`: keep-alive ``http.client`` connections for
loopback URLs, httpx otherwise; one reading of a rollout's answer) and one thread pool of
``concurrency`` workers serve every rollout; :meth:`batch_evaluate`
flattens several (candidate, seeds) pairs into the one pool.

Conventions (docs/optimize.md, "The contract conventions"):

* every component of a candidate is a key of ``policy.config``: a single prompt travels
  as ``policy.config["prompt"]``, merged over the user's policy config (and, for a target
  serving synth-containers' ``GET /program``, also as the request's ``candidate``);
* ``metrics.details.feedback`` is the text GEPA reflects on; ``details.input`` /
  ``predicted`` / ``expected`` (or common synonyms) fill the other fields of a record.

Failures: a rollout that fails (HTTP error, bad JSON, no score) scores 0 and its error
becomes the feedback. Transport errors and 429/502/503/504 are retried. A rejected key,
a batch in which every rollout hit a transport error, or a first batch (the baseline) in
which more than half the rollouts failed (counting rollouts the app itself reports as
``runtime_error`` or ``timeout``, e.g. because its model is unreachable) raise
:class:`TaskAppUnavailableError`: those mean the task app is down, not that the prompt is
bad.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskapp.core.client import (
    Answer,
    ClientTimeout,
    HttpxTransport,
    RolloutOutcome,
    TaskAppClient,
    TransportError,
    is_key_rejection,
    rollout_request,
)
from taskapp.core.health import Backoff
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint, redact
from taskapp.optimize.errors import TaskAppUnavailableError

__all__ = ["Rollout", "TaskAppAdapter", "candidate_key", "placeholders"]

logger = get_logger("taskapp.optimize")

INPUT_KEYS = ("input", "inputs", "message", "question", "query", "observation", "text")
PREDICTED_KEYS = ("predicted", "prediction", "output", "response", "completion", "answer_given")
EXPECTED_KEYS = ("expected", "label", "gold", "target", "reference", "answer")
RETRY_STATUS = frozenset({429, 502, 503, 504})
#: ``success_status`` values that say the rollout broke, not that the prompt was bad.
BROKEN_STATUSES = frozenset({"runtime_error", "timeout"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_TEXT = 2000


def placeholders(text: str) -> set[str]:
    """The ``{name}`` template placeholders in ``text``.

    >>> sorted(placeholders("Classify {message} for {customer}; {{literal}}"))
    ['{customer}', '{message}']
    """
    return {m.group(0) for m in _PLACEHOLDER.finditer(text.replace("{{", "").replace("}}", ""))}


def candidate_key(candidate: Mapping[str, str]) -> str:
    """A short stable hash of a candidate (for run ids and caches)."""
    blob = json.dumps(dict(sorted(candidate.items())), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:10]


@dataclasses.dataclass
class Rollout:
    """One rollout's outcome, successful or not."""

    seed: int
    score: float
    error: str | None = None
    status: int | None = None  # HTTP status; None when no answer came back
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    latency_s: float = 0.0
    success_status: str | None = None  # the app's own verdict (runtime_error, timeout...)
    key_rejected: bool = False  # 401/403, or synth-ai's 400 "unauthorised"

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def broken(self) -> bool:
        """No usable score: the request failed, or the app says the rollout itself broke
        (``success_status`` ``runtime_error`` / ``timeout``, e.g. its model is down)."""
        return not self.ok or self.success_status in BROKEN_STATUSES

    def problem(self) -> str:
        """Why the rollout is :attr:`broken`, in one line."""
        if self.error:
            return self.error
        reason = self.details.get("error") or self.details.get("feedback") or ""
        return redact(f"success_status {self.success_status!r}" + (f": {reason}" if reason else ""))

    @property
    def transport_error(self) -> bool:
        return self.error is not None and self.status is None

    def output(self) -> dict[str, Any]:
        """What gepa keeps per (candidate, seed): small and JSON-able."""
        out: dict[str, Any] = {"seed": self.seed, "score": self.score}
        predicted = _first(self.details, PREDICTED_KEYS)
        if predicted is not None:
            out["predicted"] = _short(predicted, 200)
        if self.error:
            out["error"] = self.error
        return out

    def feedback(self) -> str:
        if self.error:
            return f"The rollout failed, so it scored 0: {self.error}"
        text = self.details.get("feedback")
        if isinstance(text, str) and text.strip():
            return text.strip()
        rest = {k: v for k, v in self.details.items() if k != "feedback"}
        return f"score={self.score:g}; details={_short(rest, _MAX_TEXT)}"


class TaskAppAdapter:
    """A ``gepa.GEPAAdapter`` for any task app reachable at ``base_url``.

    >>> adapter = TaskAppAdapter("http://127.0.0.1:8114", api_key="...",
    ...                          seed_candidate={"prompt": "Classify: ..."})  # doctest: +SKIP
    >>> adapter.evaluate([0, 1, 2], {"prompt": "Classify: ..."}).scores      # doctest: +SKIP
    [1.0, 0.0, 1.0]
    """

    propose_new_texts = None  # gepa: use the reflection model

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        seed_candidate: Mapping[str, str],
        policy_config: Mapping[str, Any] | None = None,
        policy_name: str | None = None,
        env_config: Mapping[str, Any] | None = None,
        env_name: str | None = None,
        concurrency: int = 8,
        timeout: float = 300.0,
        retries: int = 2,
        max_failure_rate: float = 0.5,
        run_tag: str = "opt",
        transport: Any = None,
        worker_token: str | None = None,
        send_candidate: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: also send the candidate as synth-containers' ``candidate`` (a target with /program)
        self.send_candidate = send_candidate
        self.api_key = api_key
        self.policy_config = dict(policy_config or {})
        self.policy_name = policy_name
        self.env_config = dict(env_config or {})
        self.env_name = env_name
        self.concurrency = concurrency
        self.retries = retries
        self.max_failure_rate = max_failure_rate
        self.run_tag = run_tag
        self.required = {name: placeholders(text) for name, text in seed_candidate.items()}
        self._client = TaskAppClient(
            self.base_url,
            api_key,
            worker_token=worker_token,
            timeout=timeout,
            headers=headers,
            limit=concurrency,
            transport=(
                HttpxTransport(
                    self.base_url, timeout=timeout, limit=concurrency, transport=transport
                )
                if transport is not None
                else None
            ),
        )
        self._pool = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="taskapp-optimize"
        )
        self._lock = threading.Lock()
        self._counter = 0
        #: (candidate key, seed) -> the objectives the app reported for that rollout
        self._objectives: dict[tuple[str, int], dict[str, float]] = {}
        self._checked_first = False
        self._task_inputs: dict[int, Any] = {}
        self.preloaded: dict[tuple[str, tuple[int, ...]], Any] = {}
        #: rollouts actually sent (the budget counts gepa's metric calls; this counts HTTP)
        self.rollouts_sent = 0
        self.rollouts_failed = 0
        self.placeholder_rejections = 0

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # -- gepa protocol -----------------------------------------------------------------

    def evaluate(
        self, batch: list[int], candidate: dict[str, str], capture_traces: bool = False
    ) -> Any:
        return self.batch_evaluate([(candidate, batch)], capture_traces=capture_traces)[0]

    def batch_evaluate(
        self, items: list[tuple[dict[str, str], list[int]]], capture_traces: bool = True
    ) -> list[Any]:
        """Evaluate several (candidate, seeds) pairs concurrently, in one pool."""
        gepa = importlib.import_module("gepa")
        results: list[Any] = [None] * len(items)
        jobs: list[tuple[int, dict[str, str], int]] = []
        for index, (candidate, batch) in enumerate(items):
            cached = self.preloaded.pop((candidate_key(candidate), tuple(batch)), None)
            if cached is not None and not capture_traces:
                results[index] = cached
                continue
            missing = self._missing_placeholders(candidate)
            if missing:
                results[index] = self._rejected(gepa, batch, missing, capture_traces)
                continue
            jobs.extend((index, candidate, seed) for seed in batch)
        rollouts = self.run_rollouts([(candidate, seed) for _, candidate, seed in jobs])
        self._check(rollouts)
        grouped: dict[int, list[Rollout]] = {}
        for (index, _, _), rollout in zip(jobs, rollouts, strict=True):
            grouped.setdefault(index, []).append(rollout)
        for index, group in grouped.items():
            results[index] = gepa.EvaluationBatch(
                outputs=[r.output() for r in group],
                scores=[r.score for r in group],
                trajectories=[self._trajectory(r) for r in group] if capture_traces else None,
            )
        return results

    def make_reflective_dataset(
        self,
        candidate: dict[str, str],
        eval_batch: Any,
        components_to_update: list[str],
    ) -> dict[str, list[dict[str, Any]]]:
        records = [self._record(trajectory) for trajectory in eval_batch.trajectories or []]
        return {name: [dict(record) for record in records] for name in components_to_update}

    # -- rollouts ----------------------------------------------------------------------

    def run_rollouts(self, pairs: Sequence[tuple[Mapping[str, str], int]]) -> list[Rollout]:
        """POST /rollout for every (candidate, seed), ``concurrency`` at a time, in order."""
        if not pairs:
            return []
        futures = [self._pool.submit(self.rollout, candidate, seed) for candidate, seed in pairs]
        return [future.result() for future in futures]

    def rollout(self, candidate: Mapping[str, str], seed: int) -> Rollout:
        with self._lock:
            self._counter += 1
            number = self._counter
        body = rollout_request(
            seed,
            run_id=f"{self.run_tag}-{candidate_key(candidate)}-{seed}-{number}",
            policy_config={**self.policy_config, **candidate},
            env_config=self.env_config,
            env_name=self.env_name,
            policy_name=self.policy_name,
        )
        if self.send_candidate:
            body["candidate"] = dict(candidate)
        result = self._post(body, seed)
        objectives = result.details.get("objectives")
        with self._lock:
            self.rollouts_sent += 1
            if not result.ok:
                self.rollouts_failed += 1
            if isinstance(objectives, dict) and objectives:
                self._objectives[(candidate_key(candidate), seed)] = objectives
        return result

    def objective_means(
        self, candidate: Mapping[str, str], seeds: Iterable[Any]
    ) -> dict[str, float]:
        """The mean of each objective the app reported (``objective_scores``) for
        ``candidate`` over ``seeds``; empty when it reported none."""
        key = candidate_key(candidate)
        with self._lock:
            found = [self._objectives.get((key, int(seed))) for seed in seeds]
        rows = [row for row in found if row]
        names = sorted({name for row in rows for name in row})
        return {name: sum(row.get(name, 0.0) for row in rows) / len(rows) for name in names}

    def _post(self, body: dict[str, Any], seed: int) -> Rollout:
        backoff = Backoff(first=0.05, maximum=1.0)
        attempt = 0
        started = time.perf_counter()
        while True:
            attempt += 1
            answer: Answer | None = None
            try:
                answer = self._client.request("POST", "/rollout", json_body=body)
                answer = self._client.settle(answer, body, started)  # a container's async answer
            except ClientTimeout as exc:
                return Rollout(seed, 0.0, error=f"timed out: {exc}")
            except TransportError as exc:
                problem: str = str(exc)
                wait: float | None = None
            if answer is not None:
                if answer.status == 200:
                    outcome = RolloutOutcome.from_answer(
                        answer,
                        seed=seed,
                        run_id=str(body["run_id"]),
                        latency_s=time.perf_counter() - started,
                    )
                    return self._from_outcome(outcome)
                problem = redact(answer.describe(300))
                if answer.status not in RETRY_STATUS:
                    return Rollout(
                        seed,
                        0.0,
                        error=problem,
                        status=answer.status,
                        key_rejected=is_key_rejection(answer),
                    )
                wait = _seconds(answer.headers.get("retry-after"))
            if attempt > self.retries:
                status = answer.status if answer is not None else None
                return Rollout(seed, 0.0, error=problem, status=status)
            delay = min(wait, 10.0) if wait is not None else backoff.next_delay()
            logger.debug("rollout seed %d: %s; retrying in %.2fs", seed, problem, delay)
            time.sleep(delay)

    @staticmethod
    def _from_outcome(outcome: RolloutOutcome) -> Rollout:
        """A 200 answer as gepa needs it: no usable score scores 0 with the reason."""
        if outcome.score is None:
            return Rollout(
                outcome.seed,
                0.0,
                error=outcome.error,
                status=200,
                latency_s=outcome.latency_s,
            )
        details = dict(outcome.details)
        status = outcome.success_status
        if status in ("runtime_error", "timeout", "failure") and "feedback" not in details:
            details["feedback"] = f"The rollout ended with status {status!r}."
        return Rollout(
            outcome.seed,
            outcome.score,
            details=details,
            status=200,
            latency_s=outcome.latency_s,
            success_status=status,
        )

    def _check(self, rollouts: list[Rollout]) -> None:
        if not rollouts:
            return
        rejected = [r for r in rollouts if r.key_rejected or r.status in (401, 403)]
        if rejected:
            key = f"key {fingerprint(self.api_key)}" if self.api_key else "no key sent"
            raise TaskAppUnavailableError(
                f"the task app at {self.base_url} rejected the API key on /rollout "
                f"({rejected[0].error}; {key}). Pass the key it expects (ENVIRONMENT_API_KEY "
                "or --api-key-env)"
            )
        if all(r.transport_error for r in rollouts):
            raise TaskAppUnavailableError(
                f"the task app at {self.base_url} stopped answering: all {len(rollouts)} "
                f"rollout(s) of the last batch failed (first: {rollouts[0].error}). Is it "
                "still running?"
            )
        if not self._checked_first:
            self._checked_first = True
            failed = [r for r in rollouts if r.broken]
            if len(failed) > self.max_failure_rate * len(rollouts):
                raise TaskAppUnavailableError(
                    f"{len(failed)} of {len(rollouts)} baseline rollouts failed at "
                    f"{self.base_url} (first, seed {failed[0].seed}: {failed[0].problem()}). "
                    "Check the seeds and the policy config with `taskapp eval` first"
                )

    # -- placeholders ------------------------------------------------------------------

    def _missing_placeholders(self, candidate: Mapping[str, str]) -> list[str]:
        missing: list[str] = []
        for name, required in self.required.items():
            text = candidate.get(name, "")
            missing.extend(sorted(ph for ph in required if ph not in text))
        return missing

    def _rejected(self, gepa: Any, batch: list[int], missing: list[str], traces: bool) -> Any:
        """A proposal that dropped a placeholder: score 0, no rollout, no budget spent."""
        with self._lock:
            self.placeholder_rejections += 1
        message = (
            "The prompt must keep the template placeholder(s) "
            + ", ".join(missing)
            + " exactly as written; the task app fills them in."
        )
        failures = [Rollout(seed, 0.0, error=message) for seed in batch]
        return gepa.EvaluationBatch(
            outputs=[r.output() for r in failures],
            scores=[0.0] * len(batch),
            trajectories=[self._trajectory(r) for r in failures] if traces else None,
            num_metric_calls=0,
        )

    # -- reflective records ------------------------------------------------------------

    @staticmethod
    def _trajectory(rollout: Rollout) -> dict[str, Any]:
        return {
            "seed": rollout.seed,
            "score": rollout.score,
            "error": rollout.error,
            "details": rollout.details,
            "feedback": rollout.feedback(),
        }

    def _record(self, trajectory: Mapping[str, Any]) -> dict[str, Any]:
        details = trajectory.get("details") or {}
        seed = int(trajectory.get("seed", -1))
        inputs = _first(details, INPUT_KEYS)
        if inputs is None:
            inputs = self._task_input(seed)
        record: dict[str, Any] = {
            "Inputs": inputs if isinstance(inputs, dict) else {"seed": seed, "input": inputs},
        }
        predicted = _first(details, PREDICTED_KEYS)
        record["Generated Outputs"] = (
            _short(predicted, _MAX_TEXT) if predicted is not None else "(no output recorded)"
        )
        expected = _first(details, EXPECTED_KEYS)
        if expected is not None:
            record["Expected"] = _short(expected, _MAX_TEXT)
        record["Score"] = f"{float(trajectory.get('score', 0.0)):g}"
        record["Feedback"] = trajectory.get("feedback") or ""
        return record

    def _task_input(self, seed: int) -> Any:
        """``GET /task_info?seed=N`` (cached): the input, when the rollout did not echo it."""
        if seed in self._task_inputs:
            return self._task_inputs[seed]
        value: Any = f"(seed {seed}; the task app did not report the input)"
        try:
            info = self._client.task_info(int(seed))
            if isinstance(info, dict):
                metadata = info.get("task_metadata")
                value = metadata if isinstance(metadata, dict) and metadata else info
        except Exception as exc:  # best effort: the record is still useful without it
            logger.debug("task_info for seed %d failed: %s", seed, exc)
        self._task_inputs[seed] = value
        return value


def _first(details: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        value = details.get(key)
        if value is not None and value != "":
            return value
    return None


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
