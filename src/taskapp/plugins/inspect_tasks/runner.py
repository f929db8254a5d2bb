"""Run rollouts through Inspect's own eval machinery, in one live eval run at a time.

Every rollout runs the task's solver chain and scorers on one sample inside Inspect's
``eval_async`` (the machinery ``inspect eval`` uses), so its score is the one
``inspect eval`` gives. Inspect allows one ``eval_async`` at a time per process, and each
call sets up an eval and tears it down (task logger, recorder, control server, scheduler,
results): per rollout, that was most of what taskapp added. So rollouts share a *live run*:
one ``eval_async`` over an Inspect ``TaskSource``, holding one Inspect task per (candidate
prompt, model) whose dataset is a ``SampleSource``. A rollout joins its group's running
task at once (Inspect starts the sample as soon as it is added, beside the ones in
flight); a rollout of a new group adds a task to the running eval. A task takes its
group's rollouts until it holds :data:`MAX_TASK_SAMPLES` samples (sample ids are unique in
an Inspect task, so a sample asked for again goes into a second task) and ends once idle
for :data:`LINGER_S`; a run needing more than :data:`MAX_RUN_TASKS` tasks takes no more
rollouts and ends when its last task has. Rollouts arriving then start the next run. A
lone client's next rollout arrives within the linger, so it too skips the set-up.

Results: each sample's ``EvalSample`` as Inspect hands it to the task's ``SampleSource``
when it completes (what Inspect logs). Logs: unless a ``log_dir`` is given, the run logs
no samples (nothing reads them) and its eval logs go to an in-memory filesystem, each
deleted when its task ends, so no file is left. With a ``log_dir``, each task's log (all its
samples) is written there in Inspect's ``json`` format when the task ends. (The ``eval``
zip format's read-back patches the running event loop with nest_asyncio, which refuses
uvloop's loop; taskapp never reads a log back.)
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

#: How long an idle task (and so the run) waits for the next rollout before it ends:
#: clients resubmit right after an answer, so a steady stream never pays a run's set-up.
LINGER_S = 0.02
#: At most this many samples in one Inspect task (the task keeps each sample's scores
#: until it ends); more rollouts of the group go into a new task.
MAX_TASK_SAMPLES = 256
#: At most this many Inspect tasks in one run: a run needing one more takes no more
#: rollouts, ends once its tasks have, and the next run starts. What Inspect keeps per run
#: (each finished task's log and scores, ~3 KB a sample here) stays bounded.
MAX_RUN_TASKS = 16
#: When the app stops, how long the live run may take to end before it is cancelled.
CLOSE_GRACE_S = 1.0
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
    sample: Any  # inspect_ai.dataset.Sample, its id set
    prompt: str | None
    model: Any  # inspect_ai.model.Model
    future: asyncio.Future[Any]

    @property
    def key(self) -> tuple[str | None, str]:
        return self.prompt, str(self.model)

    def fail(self, message: str) -> None:
        if not self.future.done():
            self.future.set_exception(RolloutFailure(redact(_one_line(message))))


class _Feed:
    """The samples of one live Inspect task (the rollouts of one prompt and model): its
    ``SampleSource`` callbacks, run by Inspect inside the task."""

    def __init__(
        self,
        key: tuple[str | None, str],
        linger: float,
        started: Callable[[contextvars.Context], None],
    ) -> None:
        self.key = key
        self.linger = linger
        self.started = started  # told the task's context when the task starts
        self.jobs: dict[str, _Job] = {}  # unfinished, by sample id (as Inspect compares them)
        self.ids: set[str] = set()  # every sample id added (each may be added once)
        self.pending: list[_Job] = []  # added before the task could take them
        self.context: contextvars.Context | None = None  # the task's, once it runs
        self.open = True
        self.arrived = asyncio.Event()

    def accepts(self, job: _Job) -> bool:
        return (
            self.open
            and self.key == job.key
            and str(job.sample.id) not in self.ids
            and len(self.ids) < MAX_TASK_SAMPLES
        )

    def add(self, job: _Job) -> None:
        from inspect_ai import enqueue_sample

        self.ids.add(str(job.sample.id))
        self.jobs[str(job.sample.id)] = job
        if self.context is not None:
            self.context.run(enqueue_sample, [job.sample])  # starts beside those in flight
        else:
            self.pending.append(job)
        self.arrived.set()

    def close(self) -> None:
        self.open = False
        self.arrived.set()

    def _take(self) -> list[Any]:
        if self.context is None:
            self.context = contextvars.copy_context()  # holds the task's sample enqueuer
            self.started(self.context)
        taken, self.pending = self.pending, []
        return [job.sample for job in taken]

    async def next_samples(self) -> list[Any] | None:
        """Called by Inspect when nothing is in flight: the rollouts waiting, else wait
        :attr:`linger` for one, else end the task."""
        taken = self._take()
        if taken or not self.open:
            return taken or None
        self.arrived.clear()
        if self.linger > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), self.linger)
        if self.open and self.arrived.is_set():
            return self._take()  # [] when it came through enqueue_sample: Inspect drains it
        self.open = False
        return None

    async def sample_complete(self, sample: Any) -> list[Any] | None:
        job = self.jobs.pop(str(sample.id), None)  # (the run keeps no finished sample)
        if job is not None and not job.future.done():
            job.future.set_result(sample)
        return self._take() or None

    async def sample_abandoned(self, sample: Any, epoch: int) -> list[Any] | None:
        job = self.jobs.pop(str(sample.id), None)
        if job is not None:
            job.fail("the sample was cancelled before it ran")
        return None


class _Run:
    """One live ``eval_async`` call: its tasks (one :class:`_Feed` each) and the
    ``TaskSource`` callbacks Inspect runs."""

    def __init__(self, runner: EvalRunner) -> None:
        self.runner = runner
        self.feeds: list[_Feed] = []
        self.waiting: list[tuple[_Feed, Any]] = []  # tasks the run has not taken yet
        self.context: contextvars.Context | None = None  # the run's, once it runs
        self.accepting = True
        self.problems: list[str] = []

    def route(self, job: _Job) -> bool:
        """Put the job into this run; False when the run takes no more."""
        if not self.accepting:
            return False
        for feed in self.feeds:
            if feed.accepts(job):
                feed.add(job)
                return True
        if len(self.feeds) >= MAX_RUN_TASKS:
            self.close()  # the run ends once its tasks have; the next one takes the job
            return False
        feed = _Feed(job.key, self.runner.linger, self._started)
        self.feeds.append(feed)
        feed.add(job)
        self.waiting.append((feed, self.runner._task_for(feed, job)))
        if self.context is not None:
            self._submit()
        return True

    def _started(self, context: contextvars.Context) -> None:
        """A task of the run started; its context reaches the run's task enqueuer, so the
        tasks made meanwhile start now, not when a sample of the run next completes."""
        if self.context is None:
            self.context = context
            self._submit()

    def _submit(self) -> None:
        """Add the waiting tasks to the running eval (they start beside the others)."""
        from inspect_ai import enqueue_task

        assert self.context is not None
        waiting, self.waiting = self.waiting, []
        for feed, task in waiting:
            try:
                self.context.run(enqueue_task, [task])
            except Exception as exc:  # Inspect could not resolve the task
                feed.close()
                for job in feed.jobs.values():
                    job.fail(_message(exc))

    def close(self) -> None:
        """Take no more rollouts; idle tasks end at once."""
        self.accepting = False
        for feed in self.feeds:
            feed.close()

    def _take(self) -> list[Any]:
        if self.context is None:
            self.context = contextvars.copy_context()  # holds the run's task enqueuer
        return self.initial_tasks()

    def initial_tasks(self) -> list[Any]:
        taken, self.waiting = self.waiting, []
        return [task for _, task in taken]

    async def next_tasks(self) -> list[Any] | None:
        """Called by Inspect when no task runs: the tasks waiting, else end the run."""
        taken = self._take()
        if not taken:
            self.close()
        return taken or None

    async def sample_complete(self, sample: Any, task: Any) -> list[Any] | None:
        return self._take() or None

    async def task_complete(self, log: Any) -> list[Any] | None:
        if log.status != "success":
            self.problems.append(
                log.error.message if log.error is not None else f"eval status {log.status}"
            )
        if self.runner.log_dir is None:
            _forget(log)
        return self._take() or None

    def settle(self, problem: str | None = None) -> None:
        """Fail the rollouts the run did not finish (the task failed, or the run did)."""
        self.close()
        why = problem or (self.problems[0] if self.problems else "the sample did not run")
        for feed in self.feeds:
            for job in feed.jobs.values():
                job.fail(why)


class EvalRunner:
    """Runs rollouts of one loaded task in live ``eval_async`` runs (one event loop)."""

    def __init__(self, loaded: LoadedTask, *, log_dir: str | None = None) -> None:
        self.loaded = loaded
        self.samples: Sequence[Any] = with_ids(loaded.task.dataset)
        self.log_dir = log_dir
        self.linger = LINGER_S
        self._memory_dir = f"memory://taskapp-inspect/{uuid.uuid4().hex}"
        self._queue: list[_Job] = []  # for the next run
        self._run: _Run | None = None
        self._worker: asyncio.Task[None] | None = None
        self.calls = 0  # eval_async calls made (tests, benchmarks)

    async def run(self, index: int, prompt: str | None, model: Any) -> Any:
        """The ``EvalSample`` of sample ``index`` run with ``prompt`` on ``model``."""
        loop = asyncio.get_running_loop()
        job = _Job(self.samples[index], prompt, model, loop.create_future())
        worker = self._worker
        if worker is not None and worker.get_loop() is not loop:
            # a worker of another loop: this config is served again after a stop
            self._queue, self._run, worker = [], None, None
        if self._run is None or not self._run.route(job):
            self._queue.append(job)
        if worker is None or worker.done():
            self._worker = loop.create_task(self._drain())
        return await job.future

    @property
    def busy(self) -> bool:
        """A run is live (Inspect refuses another ``eval_async`` in the process until
        it ends, at most :data:`LINGER_S` after the last rollout's answer)."""
        return self._worker is not None and not self._worker.done()

    async def idle(self) -> None:
        """Until no run is live (this loop's): after it, ``eval_async`` may be called."""
        worker = self._worker
        if worker is not None and worker.get_loop() is asyncio.get_running_loop():
            await asyncio.wait({worker})

    async def aclose(self) -> None:
        """End the live run as the app stops (its requests are answered or cancelled by
        then): idle tasks end at once; what still runs after :data:`CLOSE_GRACE_S` is
        cancelled, so a stop stays bounded; rollouts still queued fail."""
        queued, self._queue = self._queue, []
        for job in queued:
            job.fail("the task app is stopping")
        if self._run is not None:
            self._run.close()
        worker = self._worker
        if worker is None or worker.get_loop() is not asyncio.get_running_loop():
            return
        done, _ = await asyncio.wait({worker}, timeout=CLOSE_GRACE_S)
        if not done:
            worker.cancel()  # Inspect's eval_async unwinds (and allows the next one)
            await asyncio.wait({worker}, timeout=CLOSE_GRACE_S)

    async def _drain(self) -> None:
        while self._queue:
            run = _Run(self)
            jobs, self._queue = self._queue, []
            for job in jobs:
                if not run.route(job):
                    self._queue.append(job)
            self._run = run
            try:
                await self._eval(run)
            except BaseException as exc:
                run.settle(_message(exc))
                if not isinstance(exc, Exception):
                    raise
            finally:
                if self._run is run:
                    self._run = None
                run.settle()

    async def _eval(self, run: _Run) -> None:
        from inspect_ai import TaskSource, eval_async

        source = TaskSource.from_tasks(
            run.initial_tasks(),
            next_tasks=run.next_tasks,
            sample_complete=run.sample_complete,
            task_complete=run.task_complete,
        )
        _quiet_display()
        _hoist_revision()
        token = _CACHED_REVISION.set(True)
        try:
            while True:
                try:
                    await eval_async(
                        source,
                        log_dir=self.log_dir or self._memory_dir,
                        log_format="json",  # never read back (module docstring)
                        log_samples=self.log_dir is not None,
                        log_realtime=False,
                        score_display=False,
                        fail_on_error=False,
                        max_tasks=MAX_RUN_TASKS,
                        max_samples=MAX_TASK_SAMPLES,
                        # Inspect's console log off unless the process chose a level: its
                        # sample-error warnings quote provider messages, keys included
                        log_level=None if os.environ.get("INSPECT_LOG_LEVEL") else "critical",
                    )
                    break
                except RuntimeError as exc:
                    if _CONCURRENT_EVAL not in str(exc):
                        raise
                    await asyncio.sleep(0.01)  # another eval_async in this process (not ours)
        finally:
            _CACHED_REVISION.reset(token)
        self.calls += 1

    def _task_for(self, feed: _Feed, job: _Job) -> Any:
        from inspect_ai import SampleSource, task_with
        from inspect_ai._eval.task.constants import TASK_RUN_DIR_ATTR

        source = SampleSource.from_samples(
            [],
            next_samples=feed.next_samples,
            sample_complete=feed.sample_complete,
            sample_abandoned=feed.sample_abandoned,
        )
        task = copy.copy(self.loaded.task)
        task_with(task, dataset=source, model=job.model, epochs=1)
        if job.prompt is not None:  # else the task's own solver, untouched
            task_with(task, solver=self._solver(job.prompt))
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
