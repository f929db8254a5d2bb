"""Run rollouts through Inspect's own ``eval_async``, several at a time.

Every rollout runs the task's solver chain and scorers on one sample inside Inspect's
``eval_async`` (the machinery ``inspect eval`` uses), so its score is the one
``inspect eval`` gives. Inspect allows one ``eval_async`` at a time per process, so
rollouts that arrive while one runs wait and go together into the next call: one Inspect
task per (candidate prompt, model), each with the samples of its waiting rollouts, all
run concurrently by Inspect. A rollout arriving when nothing runs starts at once.

Logs: Inspect writes an eval log per call, in its ``json`` format: that recorder hands the
samples back in memory, where the ``eval`` (zip) format would read them back from the file
lazily, through a synchronous read that patches the running event loop with nest_asyncio
(which refuses uvloop's loop: every rollout failed under uvloop) and costs CPU per call.
Unless a ``log_dir`` is given, the log goes to an in-memory filesystem and is deleted once
the call returns, so no file is left per rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from taskapp.core.secrets import redact
from taskapp.plugins.inspect_tasks.tasks import LoadedTask, _message

__all__ = ["EvalRunner", "RolloutFailure"]

#: At most this many rollouts go into one eval_async call.
MAX_BATCH = 256
#: How long a batch may wait for as many rollouts as the last batch had (concurrent
#: clients resubmit together after a batch; without the wait the first one would start a
#: batch of its own and the rest queue behind it): this, or a quarter of the last batch's
#: duration when that is longer. A lone client never waits.
GATHER_WINDOW_S = 0.02
_CONCURRENT_EVAL = "Multiple concurrent calls to eval_async"
#: Set while this module's eval_async calls run: their logs take the git revision from a
#: per-process cache (see :func:`_hoist_revision`).
_CACHED_REVISION: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "taskapp_inspect_cached_revision", default=False
)
_hoisted = threading.Lock()


class RolloutFailure(Exception):
    """A rollout Inspect could not finish (model error, solver error); the message is
    the provider's or Inspect's, with registered secrets redacted."""


@dataclasses.dataclass
class _Job:
    index: int
    sample_id: Any
    prompt: str | None
    model: Any  # inspect_ai.model.Model
    future: asyncio.Future[Any]


class EvalRunner:
    """Batches rollouts of one loaded task into ``eval_async`` calls (one event loop)."""

    def __init__(self, loaded: LoadedTask, *, log_dir: str | None = None) -> None:
        self.loaded = loaded
        self.samples: Sequence[Any] = with_ids(loaded.task.dataset)
        self.log_dir = log_dir
        self._memory_dir = f"memory://taskapp-inspect/{uuid.uuid4().hex}"
        self._queue: list[_Job] = []
        self._worker: asyncio.Task[None] | None = None
        self.calls = 0  # eval_async calls made (tests, benchmarks)
        self._last_batch = 1
        self._last_duration = 0.0
        self._arrived: asyncio.Event | None = None

    async def run(self, index: int, prompt: str | None, model: Any) -> Any:
        """The ``EvalSample`` of sample ``index`` run with ``prompt`` on ``model``."""
        loop = asyncio.get_running_loop()
        job = _Job(index, self.samples[index].id, prompt, model, loop.create_future())
        worker = self._worker
        if worker is not None and worker.get_loop() is not loop:
            # a worker of another loop: this config is served again after a stop
            self._queue = [j for j in self._queue if j.future.get_loop() is loop]
            self._arrived = None
            worker = None
        self._queue.append(job)
        if self._arrived is not None:
            self._arrived.set()
        if worker is None or worker.done():
            self._worker = loop.create_task(self._drain())
        return await job.future

    async def _gather(self) -> None:
        """Wait (at most :data:`GATHER_WINDOW_S`) until as many rollouts are queued as the
        last batch held."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(GATHER_WINDOW_S, self._last_duration / 4)
        while len(self._queue) < self._last_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def _drain(self) -> None:
        while self._queue:
            await self._gather()
            self._last_batch = min(len(self._queue), MAX_BATCH)
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            started = asyncio.get_running_loop().time()
            try:
                await self._run_batch(batch)
                self._last_duration = asyncio.get_running_loop().time() - started
            except BaseException as exc:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(RolloutFailure(_failure_text(exc)))
                if not isinstance(exc, Exception):
                    raise

    async def _run_batch(self, batch: list[_Job]) -> None:
        groups = _group(batch)
        tasks = [self._task_for(group) for group in groups]
        log_dir = self.log_dir or self._memory_dir
        _quiet_display()
        _hoist_revision()
        token = _CACHED_REVISION.set(True)
        try:
            logs = await self._eval(tasks, log_dir, len(batch))
        finally:
            _CACHED_REVISION.reset(token)
        self.calls += 1
        for group, log in zip(groups, logs, strict=True):
            self._settle(group, log)
            if self.log_dir is None:
                _forget(log)

    @staticmethod
    async def _eval(tasks: list[Any], log_dir: str, samples: int) -> Any:
        from inspect_ai import eval_async

        while True:
            try:
                return await eval_async(
                    tasks,
                    log_dir=log_dir,
                    log_format="json",  # samples come back in memory (module docstring)
                    log_samples=True,
                    log_realtime=False,
                    score_display=False,
                    fail_on_error=False,
                    max_tasks=len(tasks),
                    max_samples=samples,
                    # Inspect's console log off unless the process chose a level: its
                    # sample-error warnings quote provider messages, keys included
                    log_level=None if os.environ.get("INSPECT_LOG_LEVEL") else "critical",
                )
            except RuntimeError as exc:
                if _CONCURRENT_EVAL not in str(exc):
                    raise
                await asyncio.sleep(0.01)  # another eval_async in this process (not ours)

    def _task_for(self, group: list[_Job]) -> Any:
        from inspect_ai import task_with
        from inspect_ai._eval.task.constants import TASK_RUN_DIR_ATTR

        first = group[0]
        task = copy.copy(self.loaded.task)
        task_with(
            task,
            dataset=[self.samples[job.index] for job in group],
            model=first.model,
            epochs=1,
        )
        if first.prompt is not None:  # else the task's own solver, untouched
            task_with(task, solver=self._solver(first.prompt))
        # Inspect changes the working directory to the run dir while it sets a task up;
        # the current one makes that a no-op (the host process's cwd never moves).
        setattr(task, TASK_RUN_DIR_ATTR, os.getcwd())
        return task

    def _solver(self, prompt: str) -> Any:
        from inspect_ai.solver import chain, prompt_template, system_message
        from inspect_ai.solver._chain import unroll

        solvers = unroll(self.loaded.task.solver)
        declared = self.loaded.prompt
        if declared.kind == "system_message":
            solvers[declared.index] = system_message(prompt, **declared.params)
        elif declared.kind == "prompt_template":
            solvers[declared.index] = prompt_template(prompt, **declared.params)
        else:
            solvers.insert(0, candidate_system_message(prompt))
        return chain(*solvers)

    @staticmethod
    def _settle(group: list[_Job], log: Any) -> None:  # one Inspect task's log
        by_id: dict[Any, list[Any]] = {}
        for sample in log.samples or []:
            by_id.setdefault(sample.id, []).append(sample)
        problem = log.error.message if log.error is not None else f"eval status {log.status}"
        for job in group:
            if job.future.done():
                continue
            found = by_id.get(job.sample_id)
            if found:
                job.future.set_result(found.pop(0))
            else:
                job.future.set_exception(RolloutFailure(redact(_one_line(problem))))


def with_ids(dataset: Any) -> list[Any]:
    """The samples in the dataset's order; one without an id gets its position + 1, the
    id ``inspect eval`` gives it (so results and logs match by id)."""
    samples = list(dataset)
    return [
        sample if sample.id is not None else sample.model_copy(update={"id": n + 1})
        for n, sample in enumerate(samples)
    ]


def candidate_system_message(prompt: str) -> Any:
    """A solver putting ``prompt`` in front of the conversation as a system message, as
    written (no ``{placeholder}`` formatting, unlike Inspect's ``system_message``)."""
    from inspect_ai.model import ChatMessageSystem
    from inspect_ai.solver import Generate, TaskState, solver
    from inspect_ai.solver._util import append_system_message

    @solver(name="taskapp_candidate_prompt")
    def candidate() -> Any:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            append_system_message(state.messages, ChatMessageSystem(content=prompt))
            return state

        return solve

    return candidate()


def _group(batch: list[_Job]) -> list[list[_Job]]:
    """One group per (prompt, model); a sample asked for twice goes into a second group
    (sample ids are unique within an Inspect task)."""
    groups: list[list[_Job]] = []
    seen: list[tuple[str | None, str, set[int]]] = []
    for job in batch:
        name = str(job.model)
        for (prompt, model, indexes), group in zip(seen, groups, strict=True):
            if prompt == job.prompt and model == name and job.index not in indexes:
                indexes.add(job.index)
                group.append(job)
                break
        else:
            seen.append((job.prompt, name, {job.index}))
            groups.append([job])
    return groups


def _forget(log: Any) -> None:
    """Delete an in-memory eval log (its samples are read)."""
    location = getattr(log, "location", None)
    if not location or not str(location).startswith("memory://"):
        return
    with contextlib.suppress(Exception):
        import fsspec  # type: ignore[import-untyped]

        fsspec.filesystem("memory").rm(str(location))


def _hoist_revision() -> None:
    """Inspect records the git revision of the working directory in every eval log, by
    running ``git`` three times per ``eval_async`` call (outside pytest): ~10 ms of a
    one-sample call, per rollout. Within this module's calls (:data:`_CACHED_REVISION`)
    the revision is computed once per working directory and process (a kept log records
    the checkout as it was at the first rollout); every other ``eval_async`` in the
    process is untouched. Installed once, at the first batch; a no-op on an Inspect
    without ``resolve_revision``."""
    with _hoisted:
        import inspect_ai._eval.task.log as task_log

        original: Callable[[], Any] | None = getattr(task_log, "resolve_revision", None)
        if original is None or getattr(original, "_taskapp_hoisted", False):
            return
        cache: dict[str, Any] = {}

        def resolve_revision() -> Any:
            if not _CACHED_REVISION.get():
                return original()
            cwd = os.getcwd()
            if cwd not in cache:
                cache[cwd] = original()
            return cache[cwd]

        resolve_revision._taskapp_hoisted = True  # type: ignore[attr-defined]
        task_log.resolve_revision = resolve_revision


def _quiet_display() -> None:
    """Inspect's console display off, unless the process chose one (INSPECT_DISPLAY).

    Off is Inspect's ``log`` display: its progress and results as INFO records of the root
    logger, silent at Python's default WARNING level. Not ``none``, which still renders
    the results table with rich on every call (two thirds of a one-sample call's CPU time
    here), nor nothing: ``eval_async`` itself then picks ``plain``, which prints it.
    """
    import inspect_ai.util._display as display

    if not display.display_type_initialized():
        display.init_display_type(os.environ.get("INSPECT_DISPLAY") or "log")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _failure_text(exc: BaseException) -> str:
    return redact(_one_line(_message(exc)))
