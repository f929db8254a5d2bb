"""``run()`` / ``run_async()``: GEPA prompt optimization against a task app, locally.

Order of work, each step releasing what the previous ones started when it fails::

    validate     seeds, budget, prompt, reflection model, output dir (no I/O yet)
    import gepa  GepaNotInstalledError when missing
    target       URL, or start the task app in-process (core.endpoint.open_endpoint)
    health       GET /health (TaskAppUnavailableError when down or the key is rejected)
    info         GET /info: the advertised default prompt when none is given
    optimize     gepa.optimize with TaskAppAdapter + our stopper, logger and callback
    test         baseline and best on the test seeds (not counted in the budget)
    save         result.json, best prompt, history.jsonl, score curve (output_dir)

The steps live in sibling modules: ``resolved`` (validate: ``OptimizeConfig.resolve()``),
``preflight`` (health, info, seeds), ``stopsignals`` (Ctrl-C / SIGTERM), ``progress`` (gepa
callback, logger, stopper) and ``gepa_state`` (the result from gepa's state); this module
runs them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from taskapp.core.endpoint import Endpoint, is_url, open_endpoint
from taskapp.core.errors import ConfigurationError
from taskapp.core.importing import install_command
from taskapp.core.logs import get_logger
from taskapp.core.seeds import SeedLoader, SeedsLike
from taskapp.optimize.adapter import TaskAppAdapter, candidate_key
from taskapp.optimize.config import OptimizeConfig
from taskapp.optimize.errors import (
    GepaNotInstalledError,
    OptimizeError,
    ReflectionModelError,
    RunRecordError,
)
from taskapp.optimize.gepa_state import best_idx, build_result, read_history
from taskapp.optimize.lm import ReflectionRecorder
from taskapp.optimize.preflight import advertised_prompts, check_health, check_seeds, task_name
from taskapp.optimize.progress import GepaLogger, JsonlWriter, ProgressTracker, RunStopper
from taskapp.optimize.resolved import HISTORY_FILE, RUN_FILE, STATE_DIR, ResolvedRun
from taskapp.optimize.result import OptimizeResult
from taskapp.optimize.stopsignals import first_signal_stops
from taskapp.optimize.tree import candidate_tree_html

__all__ = ["advertised_prompts", "import_gepa", "run", "run_async", "run_config"]

logger = get_logger("taskapp.optimize")


def import_gepa() -> Any:
    """``import gepa``, or a clear :class:`GepaNotInstalledError`."""
    try:
        return importlib.import_module("gepa")
    except ImportError as exc:
        raise GepaNotInstalledError(
            "taskapp optimize needs the optional 'gepa' package: "
            f"{install_command('optimize')} (import failed: {exc})"
        ) from exc


# -- run ---------------------------------------------------------------------------------


def run(
    target: Any,
    seed_prompt: str | Mapping[str, str] | None = None,
    train_seeds: SeedsLike = (),
    val_seeds: SeedsLike = (),
    reflection_lm: Callable[[Any], Any] | str | None = None,
    policy: Mapping[str, Any] | None = None,
    budget: int = 300,
    *,
    test_seeds: SeedsLike | None = None,
    policy_name: str | None = None,
    env_config: Mapping[str, Any] | None = None,
    env_name: str | None = None,
    prompt_key: str = "prompt",
    minibatch_size: int = 3,
    max_concurrency: int = 8,
    patience: int | None = 20,
    timeout_s: float | None = None,
    perfect_score: float = 1.0,
    seed: int = 0,
    selection: str = "pareto",
    reflection_prompt_template: str | None = None,
    api_key: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stop_event: threading.Event | None = None,
    rollout_timeout: float = 300.0,
    health_timeout: float = 30.0,
    max_reflection_failures: int = 3,
    start: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> OptimizeResult:
    """Optimize a prompt with GEPA against a task app's ``POST /rollout``; return the result.

    >>> from taskapp.optimize import run, StandInReflectionLM
    >>> result = run("support-intents", None, "0-59", "60-89",
    ...              reflection_lm=StandInReflectionLM(), budget=200)   # doctest: +SKIP
    >>> result.baseline_score, result.best_score                       # doctest: +SKIP

    * ``target``: a URL, an InProcessTaskApp, a TaskAppConfig, an ASGI app, a ``.py``
      path, ``"module:attr"`` or a name in ``aliases`` (``taskapp.examples.BUNDLED``
      names the bundled examples): :func:`taskapp.core.endpoint.open_endpoint`, the
      resolution :func:`taskapp.evaluate` uses too (same key, same ``start=`` options).
    * ``start``: :class:`~taskapp.InProcessTaskApp` keyword arguments for a target
      started here (``tunnel_mode``, ``server``, ``port``, ...), as for ``evaluate``.
    * ``seed_prompt``: the starting prompt, sent as ``policy.config[prompt_key]``; a
      mapping optimizes several ``policy.config`` keys at once. None: the default the
      task app advertises in ``/info`` (``prompts`` or ``default_prompt``).
    * ``train_seeds`` (reflection minibatches) / ``val_seeds`` (selection) /
      ``test_seeds`` (held out, baseline and best scored after the run): ``"0-29,40"``,
      a range, or a list.
    * ``reflection_lm``: ``OpenAICompatLM(...)``, ``StandInReflectionLM()`` (or
      ``"stand-in"``), or any callable ``prompt -> text``.
    * ``policy``: merged into every rollout's ``policy.config`` (model, inference_url...).
    * ``budget``: the most rollouts the run uses, baseline included (never exceeded: the
      run stops before an iteration that might not fit). With ``resume`` it is the total
      over all the runs in ``output_dir``.
    * ``patience``: stop after that many iterations without a better best score.
    * ``output_dir``: saves the result, checkpoints gepa's state there and writes
      ``history.jsonl`` as it goes; ``resume=True`` continues the run saved there.
    * ``stop_event``: set it (from any thread) to stop after the current step; on the
      main thread the first Ctrl-C or SIGTERM sets it too. The result then has status
      ``"interrupted"``.

    Raises :class:`ConfigurationError` for bad inputs (before anything starts),
    :class:`GepaNotInstalledError`, :class:`TaskAppUnavailableError` (down, key rejected,
    rollouts failing) and :class:`ReflectionModelError` (the model failed every time);
    the last two carry the partial ``result`` (saved when ``output_dir`` is set).
    """
    given = locals()  # the parameters are OptimizeConfig's fields (a test keeps them so)
    config = OptimizeConfig(**{f.name: given[f.name] for f in dataclasses.fields(OptimizeConfig)})
    return run_config(
        target,
        config,
        api_key=api_key,
        on_progress=on_progress,
        stop_event=stop_event,
        start=start,
        aliases=aliases,
    )


def run_config(
    target: Any,
    config: OptimizeConfig,
    *,
    api_key: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stop_event: threading.Event | None = None,
    worker_token: str | None = None,
    start: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> OptimizeResult:
    """:func:`run` with the run described by one :class:`OptimizeConfig`.

    ``worker_token``: for a URL behind a taskapp relay, the lease's worker token (sent in
    the relay's worker-token header with every request). ``start`` and ``aliases``: as
    for :func:`run` (:func:`taskapp.core.endpoint.open_endpoint`).
    """
    from taskapp.core.blocking import call_blocking, in_running_loop

    resolved = config.resolve()
    gepa = import_gepa()
    if in_running_loop():
        # A Jupyter cell: run on a helper thread (as `with InProcessTaskApp` and
        # taskapp.evaluate do). Safe for a task app taskapp starts (it has its own loop);
        # a task app at a URL might be served on this very loop, which then cannot answer.
        if is_url(target):
            logger.warning(
                "taskapp.optimize.run() blocks this thread's running event loop while it "
                "runs; if the task app at %s is served on that loop it cannot answer. Use "
                "`await taskapp.optimize.run_async(...)` there",
                target,
            )
        return call_blocking(
            _run_config,
            target,
            resolved,
            gepa,
            api_key,
            on_progress,
            stop_event,
            worker_token,
            start,
            aliases,
            name="taskapp-optimize",
        )
    return _run_config(
        target, resolved, gepa, api_key, on_progress, stop_event, worker_token, start, aliases
    )


def _run_config(
    target: Any,
    resolved: ResolvedRun,
    gepa: Any,
    api_key: str | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
    stop_event: threading.Event | None,
    worker_token: str | None = None,
    start: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> OptimizeResult:
    event = stop_event if stop_event is not None else threading.Event()
    opened = open_endpoint(
        target, api_key=api_key, worker_token=worker_token, aliases=aliases, start=start
    )
    with opened as endpoint:
        info = check_health(endpoint, resolved.config.health_timeout)
        check_seeds(endpoint, resolved)
        return _Run(resolved, gepa, endpoint, info, event, on_progress).execute()


async def run_async(target: Any, *args: Any, **kwargs: Any) -> OptimizeResult:
    """:func:`run` in a worker thread, so this event loop (and a task app on it) keeps going.

    Cancelling the awaiting task stops the run gracefully: it sets the stop event, waits
    for the current step to finish (nothing is left running) and re-raises
    ``CancelledError``.
    """
    event = kwargs.pop("stop_event", None) or threading.Event()
    future = asyncio.ensure_future(
        asyncio.to_thread(run, target, *args, stop_event=event, **kwargs)
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        event.set()
        with contextlib.suppress(BaseException):
            await future
        raise


class _Run:
    """One optimization run against an open endpoint."""

    def __init__(
        self,
        resolved: ResolvedRun,
        gepa: Any,
        endpoint: Endpoint,
        info: dict[str, Any],
        stop_event: threading.Event,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.r = resolved
        self.c = resolved.config
        self.gepa = gepa
        self.endpoint = endpoint
        self.info = info
        self.stop_event = stop_event
        self.on_progress = on_progress
        self.started = time.perf_counter()
        self.previous: dict[str, Any] = {}
        #: the signal (SIGINT or SIGTERM) that stopped the run, if one did
        self.caught: list[int] = []

    # -- setup -------------------------------------------------------------------------

    def _seed_candidate(self) -> dict[str, str]:
        prompt = self.c.seed_prompt
        if prompt is None:
            advertised = advertised_prompts(self.info, self.c.prompt_key)
            if not advertised:
                raise ConfigurationError(
                    f"no seed prompt: pass one (--prompt / --prompt-file), or let the task "
                    f"app at {self.endpoint.label} advertise its default in /info "
                    "(task_metadata.prompts or default_prompt) or serve synth-containers' "
                    "GET /program (see docs/optimize.md)"
                )
            where = "GET /program" if self.info.get("program") else "/info"
            logger.info("using the prompt(s) advertised in %s: %s", where, ", ".join(advertised))
            return advertised
        if isinstance(prompt, str):
            return {self.c.prompt_key: prompt}
        self._warn_unread(dict(prompt))
        return dict(prompt)

    def _warn_unread(self, prompt: dict[str, str]) -> None:
        """Say when a several-part seed prompt (a TOML's initial_prompt.messages) names
        policy.config keys the app does not read: those parts change nothing."""
        reads = set(advertised_prompts(self.info, self.c.prompt_key)) or {self.c.prompt_key}
        unread = sorted(set(prompt) - reads)
        if unread:
            logger.warning(
                "the seed prompt's parts %s are not among the policy.config keys the task app "
                "at %s reads (%s): optimizing them changes nothing; give one prompt, or name "
                "the parts after the app's keys",
                ", ".join(map(repr, unread)),
                self.endpoint.label,
                ", ".join(map(repr, sorted(reads))),
            )

    def _load_previous(self, seed_candidate: dict[str, str]) -> dict[str, Any]:
        folder = self.r.output_dir
        assert folder is not None
        try:
            previous = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {folder / RUN_FILE}: {exc}") from exc
        for key, mine in (
            ("train_seeds", self.r.train),
            ("val_seeds", self.r.val),
            ("seed_candidate", seed_candidate),
        ):
            if previous.get(key) != mine:
                raise ConfigurationError(
                    f"--resume: the run in {str(folder)!r} used other {key.replace('_', ' ')}; "
                    "resume with the same ones, or start a new run in another --out"
                )
        return dict(previous)

    def _write_run_file(self, seed_candidate: dict[str, str], **extra: Any) -> None:
        folder = self.r.output_dir
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            **self.previous,
            "train_seeds": self.r.train,
            "val_seeds": self.r.val,
            "seed_candidate": seed_candidate,
            "target": self.endpoint.label if not self.endpoint.started_here else None,
            "config": self.r.public(),
            **extra,
        }
        self.previous = data
        tmp = folder / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(folder / RUN_FILE)

    # -- the run -----------------------------------------------------------------------

    def _preload_baseline(self, adapter: TaskAppAdapter, seed_candidate: dict[str, str]) -> None:
        """On --resume, hand GEPA the seed prompt's stored validation scores (not re-scored)."""
        baseline_scores = self.previous.get("baseline_val_scores")
        if not (self.c.resume and isinstance(baseline_scores, dict) and baseline_scores):
            return
        val = self.r.val
        scores = [float(baseline_scores.get(str(seed), 0.0)) for seed in val]
        adapter.preloaded[(candidate_key(seed_candidate), tuple(val))] = self.gepa.EvaluationBatch(
            outputs=[{"seed": seed, "score": sc} for seed, sc in zip(val, scores, strict=True)],
            scores=scores,
        )

    def execute(self) -> OptimizeResult:  # noqa: C901, PLR0915 -- complexity 13 and 59 statements at most (issue 21 ratchet; its end status split out when it grew to 68); split when next changed
        r, c = self.r, self.c
        seed_candidate = self._seed_candidate()
        history: list[dict[str, Any]] = []
        elapsed_before = 0.0
        if c.resume:
            self.previous = self._load_previous(seed_candidate)
            history = read_history(r.output_dir)
            elapsed_before = float(self.previous.get("elapsed_s") or 0.0)
        # A new run writes nothing until its baseline is scored: a run that cannot start
        # leaves --out as it was, so the next attempt needs no --resume.

        recorder = ReflectionRecorder(r.reflection_lm)
        records: list[Callable[[dict[str, Any]], None]] = []
        sinks: list[Callable[[dict[str, Any]], None]] = []
        writer: JsonlWriter | None = None
        if r.output_dir is not None:
            writer = JsonlWriter(r.output_dir / HISTORY_FILE, truncate=not c.resume)
            records.append(writer)

        def remember_baseline(event: dict[str, Any]) -> None:
            if event.get("event") == "baseline":  # lets --resume skip re-scoring the seed
                self._write_run_file(seed_candidate, baseline_val_scores=event["val_scores"])

        records.append(remember_baseline)
        if self.on_progress is not None:
            sinks.append(self.on_progress)
            with contextlib.suppress(Exception):  # a label for the job list, not history
                self.on_progress({"event": "started", "task": task_name(self.info)})
        tracker = ProgressTracker(
            budget=c.budget,
            history=history,
            sinks=sinks,
            records=records,
            resuming=c.resume,
            elapsed_before=elapsed_before,
        )
        stopper = RunStopper(
            budget=c.budget,
            iteration_cost=r.iteration_cost,
            patience=c.patience,
            timeout_s=c.timeout_s,
            stop_event=self.stop_event,
            recorder=recorder,
            max_reflection_failures=c.max_reflection_failures,
            tracker=tracker,
        )
        adapter = TaskAppAdapter(
            self.endpoint.url,
            api_key=self.endpoint.api_key,
            seed_candidate=seed_candidate,
            policy_config=c.policy,
            policy_name=c.policy_name,
            env_config=c.env_config,
            env_name=c.env_name,
            concurrency=c.max_concurrency,
            timeout=c.rollout_timeout,
            run_tag=f"opt-{uuid.uuid4().hex[:8]}",
            worker_token=self.endpoint.worker_token,
            send_candidate=bool(self.info.get("program")),
            headers=self.endpoint.headers,
        )
        tracker.objectives_of = adapter.objective_means  # a Pareto view of the candidates
        self._preload_baseline(adapter, seed_candidate)
        status, error, failure = "succeeded", None, None
        gepa_result: Any = None
        try:
            with first_signal_stops(self.stop_event, self.caught):
                try:
                    gepa_result = self.gepa.optimize(
                        seed_candidate=seed_candidate,
                        trainset=SeedLoader(r.train),
                        valset=SeedLoader(r.val),
                        adapter=adapter,
                        reflection_lm=recorder,
                        candidate_selection_strategy=c.selection,
                        skip_perfect_score=True,
                        perfect_score=c.perfect_score,
                        reflection_minibatch_size=c.minibatch_size,
                        reflection_prompt_template=r.template,
                        stop_callbacks=[stopper],
                        logger=GepaLogger(),
                        run_dir=str(r.output_dir / STATE_DIR) if r.output_dir else None,
                        callbacks=[tracker],
                        track_best_outputs=False,
                        display_progress_bar=False,
                        seed=c.seed,
                        raise_on_exception=True,
                    )
                except OptimizeError as exc:
                    status, error, failure = "failed", exc.message, exc
                    stopper.reason = stopper.reason or "error"
                except KeyboardInterrupt:
                    status, error = "interrupted", "interrupted (Ctrl-C twice)"
                    stopper.reason = "interrupted"
                    self._finish(
                        tracker, stopper, recorder, adapter, seed_candidate, status, error, None
                    )
                    raise
                if failure is None:
                    status, error, failure = self._ended_how(tracker, stopper, recorder)
            test_scores = None
            if status == "succeeded" and r.test is not None and tracker.state is not None:
                test_scores = self._test_scores(adapter, tracker.state, seed_candidate)
            result = self._finish(
                tracker,
                stopper,
                recorder,
                adapter,
                seed_candidate,
                status,
                error,
                test_scores,
                gepa_result,
            )
        finally:
            adapter.close()
            if writer is not None:
                writer.close()
        if failure is not None:
            if result is None:
                raise failure
            raise type(failure)(failure.message, result=result) from failure
        assert result is not None
        return result

    def _ended_how(
        self, tracker: ProgressTracker, stopper: RunStopper, recorder: ReflectionRecorder
    ) -> tuple[str, str | None, OptimizeError | None]:
        """(status, error, failure) of a run GEPA ended without raising."""
        if tracker.record_error is not None:
            error = self._record_error_message(tracker)
            failure = RunRecordError(error)
            failure.__cause__ = tracker.record_error
            return "failed", error, failure
        if stopper.reason == "interrupted":
            return "interrupted", None, None
        if stopper.reason == "reflection_failures":
            error = (
                f"the reflection model failed {recorder.consecutive_failures} "
                f"time(s) in a row ({recorder.failures} of {recorder.calls} calls); "
                f"last error: {recorder.last_error}"
            )
            return "failed", error, ReflectionModelError(error)
        return "succeeded", None, None

    def _record_error_message(self, tracker: ProgressTracker) -> str:
        return (
            f"cannot write the run's records in {str(self.r.output_dir)!r} "
            f"({tracker.record_error}): the run stopped; free space there (or fix the "
            "disk), then run again with --resume"
        )

    def _test_scores(
        self, adapter: TaskAppAdapter, state: Any, seed_candidate: dict[str, str]
    ) -> dict[str, float]:
        test = self.r.test or []
        best = best_idx(state)
        best_candidate = state.program_candidates[best]
        pairs = [(seed_candidate, seed) for seed in test]
        if best != 0:
            pairs += [(best_candidate, seed) for seed in test]
        rollouts = adapter.run_rollouts(pairs)
        baseline = rollouts[: len(test)]
        best_rollouts = rollouts[len(test) :] if best != 0 else baseline
        return {
            "baseline": sum(r.score for r in baseline) / len(test),
            "best": sum(r.score for r in best_rollouts) / len(test),
            "failed_rollouts": sum(1 for r in rollouts if not r.ok),
        }

    def _finish(
        self,
        tracker: ProgressTracker,
        stopper: RunStopper,
        recorder: ReflectionRecorder,
        adapter: TaskAppAdapter,
        seed_candidate: dict[str, str],
        status: str,
        error: str | None,
        test_scores: dict[str, float] | None,
        gepa_result: Any = None,
    ) -> OptimizeResult | None:
        state = tracker.state
        if state is None:  # failed before the baseline was scored: nothing to report
            return None
        tracker.emit(
            {
                "event": "stopped",
                "reason": stopper.reason or "budget",
                "status": status,
                "metric_calls": int(state.total_num_evals),
                "best_score": tracker.best_score(),
                "budget": self.c.budget,
                "signal": signal.Signals(self.caught[0]).name if self.caught else None,
            }
        )
        result = build_result(
            self.gepa,
            state,
            run=self.r,
            seed_candidate=seed_candidate,
            status=status,
            error=error,
            stopped_by=stopper.reason or "budget",
            history=tracker.history,
            test_scores=test_scores,
            elapsed=tracker.elapsed(),
            reflection=recorder.usage(),
            rollouts={
                "sent": adapter.rollouts_sent,
                "failed": adapter.rollouts_failed,
                "placeholder_rejections": adapter.placeholder_rejections,
            },
            gepa_result=gepa_result,
        )
        if self.r.output_dir is not None and tracker.record_error is None:
            self._write_run_file(seed_candidate, elapsed_s=result.elapsed_s, status=status)
            result.save(self.r.output_dir)
            # ours, not gepa's candidate_tree_html(): that one loads its renderer from a
            # CDN and is blank offline
            (self.r.output_dir / "candidate_tree.html").write_text(
                candidate_tree_html(result.candidates, best_idx=result.best_idx,
                                    title=f"candidates ({status})"),
                encoding="utf-8",
            )  # fmt: skip
        return result
