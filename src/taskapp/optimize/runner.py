"""``run()`` / ``run_async()``: GEPA prompt optimization against a task app, locally.

Order of work, each step releasing what the previous ones started when it fails::

    validate     seeds, budget, prompt, reflection model, output dir (no I/O yet)
    import gepa  GepaNotInstalledError when missing
    target       URL, or start the task app in-process (open_target)
    health       GET /health (TaskAppUnavailableError when down or the key is rejected)
    info         GET /info: the advertised default prompt when none is given
    optimize     gepa.optimize with TaskAppAdapter + our stopper, logger and callback
    test         baseline and best on the test seeds (not counted in the budget)
    save         result.json, best prompt, history.jsonl, score curve (output_dir)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import math
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from taskapp.core.client import WORKER_TOKEN_HEADER, TaskAppClient
from taskapp.core.errors import (
    ApiKeyRejectedError,
    ConfigurationError,
    HealthCheckError,
    TaskAppRequestError,
)
from taskapp.core.extras import install_command
from taskapp.core.health import wait_healthy
from taskapp.core.logs import get_logger
from taskapp.core.secrets import redact
from taskapp.core.signals import call_previous, capture_signals
from taskapp.optimize.adapter import TaskAppAdapter, candidate_key
from taskapp.optimize.errors import (
    GepaNotInstalledError,
    OptimizeError,
    ReflectionModelError,
    TaskAppUnavailableError,
)
from taskapp.optimize.lm import (
    REFLECTION_TEMPLATE,
    ReflectionRecorder,
    describe_lm,
)
from taskapp.optimize.progress import GepaLogger, JsonlWriter, ProgressTracker, RunStopper
from taskapp.optimize.result import OptimizeResult
from taskapp.optimize.seeds import SeedLoader, SeedsLike, format_seeds, known_seeds, parse_seeds
from taskapp.optimize.settings import OptimizeConfig
from taskapp.optimize.target import Endpoint, open_target

__all__ = ["advertised_prompts", "import_gepa", "run", "run_async", "run_config"]

logger = get_logger("taskapp.optimize")

STATE_DIR = "gepa"
RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
SELECTIONS = ("pareto", "current_best", "epsilon_greedy", "top_k_pareto")


def import_gepa() -> Any:
    """``import gepa``, or a clear :class:`GepaNotInstalledError`."""
    try:
        return importlib.import_module("gepa")
    except ImportError as exc:
        raise GepaNotInstalledError(
            "taskapp optimize needs the optional 'gepa' package: "
            f"{install_command('optimize')} (import failed: {exc})"
        ) from exc


@dataclasses.dataclass
class _Settings:
    """Validated inputs of one run."""

    seed_prompt: str | dict[str, str] | None
    train: list[int]
    val: list[int]
    test: list[int] | None
    reflection_lm: Callable[[Any], Any]
    policy: dict[str, Any]
    policy_name: str | None
    env_config: dict[str, Any]
    env_name: str | None
    prompt_key: str
    budget: int
    minibatch_size: int
    concurrency: int
    patience: int | None
    timeout_s: float | None
    perfect_score: float
    seed: int
    selection: str
    template: str
    rollout_timeout: float
    health_timeout: float
    max_reflection_failures: int
    output_dir: Path | None
    resume: bool

    @property
    def iteration_cost(self) -> int:
        """The most rollouts one gepa iteration can use: parent + child minibatch + val."""
        return 2 * self.minibatch_size + len(self.val)

    def minimum_budget(self) -> int:
        return len(self.val) + self.iteration_cost

    def public(self) -> dict[str, Any]:
        """The resolved configuration, JSON-able, without key material."""
        return {
            "prompt_key": self.prompt_key,
            "budget": self.budget,
            "minibatch_size": self.minibatch_size,
            "concurrency": self.concurrency,
            "patience": self.patience,
            "timeout_s": self.timeout_s,
            "perfect_score": self.perfect_score,
            "seed": self.seed,
            "selection": self.selection,
            "policy": json.loads(redact(json.dumps(self.policy, default=str))),
            "policy_name": self.policy_name,
            "env_config": json.loads(redact(json.dumps(self.env_config, default=str))),
            "env_name": self.env_name,
            "reflection_lm": describe_lm(self.reflection_lm),
            "rollout_timeout": self.rollout_timeout,
            "custom_template": self.template != REFLECTION_TEMPLATE,
        }


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _settings(config: OptimizeConfig) -> _Settings:
    kw = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    output_dir = Path(kw["output_dir"]).expanduser() if kw["output_dir"] is not None else None
    if kw["resume"] and output_dir is None:
        raise ConfigurationError("resume=True needs output_dir (the run to continue)")
    previous: dict[str, Any] = {}
    if kw["resume"] and output_dir is not None:
        previous = _previous_run(output_dir)
        # --resume continues with the seeds stored in run.json unless others are given
        for name in ("train_seeds", "val_seeds"):
            if _unset(kw[name]) and isinstance(previous.get(name), list):
                kw[name] = previous[name]
        if kw["test_seeds"] is None and isinstance(previous.get("test_seeds"), list):
            kw["test_seeds"] = previous["test_seeds"] or None
    train = parse_seeds(kw["train_seeds"], what="train_seeds")
    val = parse_seeds(kw["val_seeds"], what="val_seeds")
    test = (
        parse_seeds(kw["test_seeds"], what="test_seeds") if kw["test_seeds"] is not None else None
    )
    lm = config.build_reflection_lm()
    if lm is None:
        raise ConfigurationError(
            "no reflection model: pass reflection_lm=OpenAICompatLM(model=...) (any "
            "OpenAI-compatible server) or reflection_lm=StandInReflectionLM() (offline stand-in)"
        )
    if not callable(lm):
        raise ConfigurationError(
            f"reflection_lm must be callable (prompt -> text), got {type(lm).__name__}"
        )
    seed_prompt = kw["seed_prompt"]
    if seed_prompt is None and isinstance(previous.get("seed_candidate"), dict):
        seed_prompt = previous["seed_candidate"]  # --resume: the run's own seed prompt
    if seed_prompt is not None:
        if isinstance(seed_prompt, str):
            if not seed_prompt.strip():
                raise ConfigurationError("seed_prompt is empty")
        elif isinstance(seed_prompt, Mapping):
            if not seed_prompt or not all(
                isinstance(k, str) and isinstance(v, str) and v.strip()
                for k, v in seed_prompt.items()
            ):
                raise ConfigurationError(
                    "seed_prompt as a mapping must map policy.config keys to non-empty texts"
                )
            seed_prompt = dict(seed_prompt)
        else:
            raise ConfigurationError(
                f"seed_prompt must be a string or a mapping, got {type(seed_prompt).__name__}"
            )
    for name in ("policy", "env_config"):
        if kw[name] is not None and not isinstance(kw[name], Mapping):
            raise ConfigurationError(f"{name} must be a mapping (a JSON object)")
    prompt_key = kw["prompt_key"]
    if not isinstance(prompt_key, str) or not prompt_key:
        raise ConfigurationError("prompt_key must be a non-empty string")
    patience = kw["patience"]
    if patience is not None:
        patience = _positive_int(patience, "patience")
    timeout_s = kw["timeout_s"]
    if timeout_s is not None and (
        not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s) or timeout_s <= 0
    ):
        raise ConfigurationError(f"timeout_s must be a positive number, got {timeout_s!r}")
    perfect = kw["perfect_score"]
    if not isinstance(perfect, int | float) or not math.isfinite(perfect):
        raise ConfigurationError(f"perfect_score must be a finite number, got {perfect!r}")
    selection = kw["selection"]
    if selection not in SELECTIONS:
        raise ConfigurationError(f"selection must be one of {', '.join(SELECTIONS)}")
    template = kw["reflection_prompt_template"] or REFLECTION_TEMPLATE
    missing = [p for p in ("<curr_param>", "<side_info>") if p not in template]
    if missing:
        raise ConfigurationError(
            f"the reflection prompt template lacks {' and '.join(missing)}: gepa puts the "
            "current prompt and the examples there"
        )
    for name in ("rollout_timeout", "health_timeout"):
        value = kw[name]
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    settings = _Settings(
        seed_prompt=seed_prompt,
        train=train,
        val=val,
        test=test,
        reflection_lm=lm,
        policy=dict(kw["policy"] or {}),
        policy_name=kw["policy_name"],
        env_config=dict(kw["env_config"] or {}),
        env_name=kw["env_name"],
        prompt_key=prompt_key,
        budget=_positive_int(kw["budget"], "budget"),
        minibatch_size=_positive_int(kw["minibatch_size"], "minibatch_size"),
        concurrency=_positive_int(kw["max_concurrency"], "max_concurrency"),
        patience=patience,
        timeout_s=float(timeout_s) if timeout_s is not None else None,
        perfect_score=float(perfect),
        seed=_positive_int(kw["seed"], "seed", minimum=0),
        selection=selection,
        template=template,
        rollout_timeout=float(kw["rollout_timeout"]),
        health_timeout=float(kw["health_timeout"]),
        max_reflection_failures=_positive_int(
            kw["max_reflection_failures"], "max_reflection_failures"
        ),
        output_dir=output_dir,
        resume=bool(kw["resume"]),
    )
    if settings.concurrency > 256:
        raise ConfigurationError("max_concurrency must be at most 256")
    if settings.minibatch_size > len(train):
        raise ConfigurationError(
            f"minibatch_size {settings.minibatch_size} is larger than the {len(train)} train seeds"
        )
    if settings.budget < settings.minimum_budget():
        raise ConfigurationError(
            f"budget {settings.budget} is too small: the baseline takes {len(val)} rollouts "
            f"(one per val seed) and one iteration up to {settings.iteration_cost} "
            f"(2 x minibatch {settings.minibatch_size} + {len(val)} val seeds); use "
            f"--budget {settings.minimum_budget()} or more, or fewer val seeds"
        )
    _check_output_dir(settings)
    if previous:
        _check_budget_left(settings, previous)
    return settings


def _unset(seeds: Any) -> bool:
    return seeds is None or (not isinstance(seeds, str | Mapping) and len(list(seeds)) == 0)


def _previous_run(folder: Path) -> dict[str, Any]:
    """What run.json (and result.json) in ``folder`` say about the run there; {} if none."""
    try:
        previous = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {folder / RUN_FILE}: {exc}") from exc
    if not isinstance(previous, dict):
        raise ConfigurationError(f"{folder / RUN_FILE} is not a JSON object")
    try:
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        previous.setdefault("metric_calls", int(result["metric_calls"]))
        previous.setdefault("test_seeds", result.get("test_seeds"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return previous


def _check_budget_left(settings: _Settings, previous: Mapping[str, Any]) -> None:
    """Resuming with a budget the previous runs already spent would do nothing: say so."""
    used = previous.get("metric_calls")
    if not isinstance(used, int):
        return
    if settings.budget - used < settings.iteration_cost:
        raise ConfigurationError(
            f"the run in {str(settings.output_dir)!r} already used {used} of its "
            f"{settings.budget} rollouts, and one more iteration needs up to "
            f"{settings.iteration_cost}: the budget is a total over all runs in that "
            f"directory, so pass --budget {used + settings.iteration_cost} or more to continue"
        )


def _check_output_dir(settings: _Settings) -> None:
    folder = settings.output_dir
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"output dir {str(folder)!r} is a file")
    has_run = (folder / RUN_FILE).exists()
    if settings.resume:
        if not has_run:
            raise ConfigurationError(
                f"nothing to resume in {str(folder)!r} (no {RUN_FILE}); drop --resume to "
                "start a new run there"
            )
        return
    if folder.exists() and any(folder.iterdir()):
        raise ConfigurationError(
            f"output dir {str(folder)!r} is not empty: pass --resume to continue the run in "
            "it, or choose another --out"
        )


# -- the task app's advertisement --------------------------------------------------------


def advertised_prompts(info: Any, prompt_key: str = "prompt") -> dict[str, str]:
    """The optimizable prompts a task app advertises in ``GET /info``, with defaults.

    Looked up, first found wins, in ``prompts`` (a mapping of policy.config key to
    default text) or ``default_prompt`` (the text of ``prompt_key``) at the top level,
    in ``task_info.task_metadata`` and in ``dataset`` (what ``describe_taskset`` returns).
    """
    if not isinstance(info, dict):
        return {}
    places: list[Any] = [info]
    task_info = info.get("task_info")
    if isinstance(task_info, dict):
        places.append(task_info.get("task_metadata"))
    places.append(info.get("dataset"))
    for place in places:
        if not isinstance(place, dict):
            continue
        prompts = place.get("prompts")
        if isinstance(prompts, dict):
            found = {k: v for k, v in prompts.items() if isinstance(v, str) and v.strip()}
            if found:
                return found
        default = place.get("default_prompt")
        if isinstance(default, str) and default.strip():
            return {prompt_key: default}
    return {}


def _check_health(endpoint: Endpoint, timeout: float) -> dict[str, Any]:
    """/health then /info; returns the info (empty when /info is not a JSON object)."""
    try:
        wait_healthy(
            endpoint.url,
            api_key=endpoint.api_key,
            headers={WORKER_TOKEN_HEADER: endpoint.worker_token} if endpoint.worker_token else None,
            timeout=timeout,
            what="the task app",
            error=TaskAppUnavailableError,
        )
    except ApiKeyRejectedError as exc:
        raise TaskAppUnavailableError(
            f"{exc.message} For a URL target, set ENVIRONMENT_API_KEY (or --api-key-env) to "
            "the task app's key."
        ) from exc
    except HealthCheckError as exc:
        raise TaskAppUnavailableError(exc.message) from exc
    try:
        with TaskAppClient(
            endpoint.url, endpoint.api_key, worker_token=endpoint.worker_token, timeout=timeout
        ) as client:
            return client.info()
    except TaskAppRequestError as exc:
        logger.info("GET /info failed (%s); continuing without it", exc)
        return {}


def _check_seeds(endpoint: Endpoint, settings: _Settings) -> None:
    """Refuse seeds outside the task set when ``GET /task_info`` says which seeds exist.

    Without this, train seeds the task app rejects (HTTP 422) would burn the whole budget
    on failed minibatches and the run would "succeed" with the baseline.
    """
    try:
        with TaskAppClient(
            endpoint.url,
            endpoint.api_key,
            worker_token=endpoint.worker_token,
            timeout=settings.health_timeout,
        ) as client:
            body = client.task_info()
    except TaskAppRequestError as exc:
        logger.info("GET /task_info failed (%s); seeds not checked", exc)
        return
    known = known_seeds(body.get("taskset") if isinstance(body, dict) else None)
    if known is None:
        return
    problems = []
    for name, seeds in (
        ("train_seeds", settings.train),
        ("val_seeds", settings.val),
        ("test_seeds", settings.test or []),
    ):
        outside = [seed for seed in seeds if seed not in known]
        if outside:
            problems.append(f"{name} {format_seeds(sorted(outside))}")
    if problems:
        raise ConfigurationError(
            f"{'; '.join(problems)} outside the task set of {endpoint.label} (its seeds "
            f"are {format_seeds(sorted(known))})"
        )


# -- Ctrl-C ------------------------------------------------------------------------------


STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _first_signal_stops(event: threading.Event, caught: list[int]) -> Iterator[None]:
    """On the main thread: the first Ctrl-C or SIGTERM sets ``event`` (and is appended to
    ``caught``); a second one goes to the previous handler (abort, as before).

    Installed on top of the lifecycle's handlers, so a SIGTERM does not stop an
    in-process task app under the running optimization: the run ends after the current
    step and saves its result, then the task app is stopped as usual.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if not event.is_set():
            event.set()
            caught.append(signum)
            logger.warning(
                "%s: stopping after the current step and saving the best prompt so far "
                "(%s again to abort)",
                signal.Signals(signum).name,
                "Ctrl-C" if signum == signal.SIGINT else "SIGTERM",
            )
            return
        before = previous[signum]
        signal.signal(signum, before)
        call_previous(signum, frame, before)

    with capture_signals(handler, STOP_SIGNALS) as installed:
        previous.update(installed)
        yield


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
) -> OptimizeResult:
    """Optimize a prompt with GEPA against a task app's ``POST /rollout``; return the result.

    >>> from taskapp.optimize import run, StandInReflectionLM
    >>> result = run("support-intents", None, "0-59", "60-89",
    ...              reflection_lm=StandInReflectionLM(), budget=200)   # doctest: +SKIP
    >>> result.baseline_score, result.best_score                       # doctest: +SKIP

    * ``target``: a URL, an InProcessTaskApp, a TaskAppConfig, an ASGI app, a ``.py``
      path, ``"module:attr"`` or a bundled example name (see :mod:`.target`).
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
    config = OptimizeConfig(
        seed_prompt=dict(seed_prompt) if isinstance(seed_prompt, Mapping) else seed_prompt,
        train_seeds=train_seeds,
        val_seeds=val_seeds,
        test_seeds=test_seeds,
        reflection_lm=reflection_lm,
        policy=dict(policy) if policy is not None else None,
        budget=budget,
        policy_name=policy_name,
        env_config=dict(env_config) if env_config is not None else None,
        env_name=env_name,
        prompt_key=prompt_key,
        minibatch_size=minibatch_size,
        max_concurrency=max_concurrency,
        patience=patience,
        timeout_s=timeout_s,
        perfect_score=perfect_score,
        seed=seed,
        selection=selection,
        reflection_prompt_template=reflection_prompt_template,
        rollout_timeout=rollout_timeout,
        health_timeout=health_timeout,
        max_reflection_failures=max_reflection_failures,
        output_dir=output_dir,
        resume=resume,
    )
    return run_config(
        target, config, api_key=api_key, on_progress=on_progress, stop_event=stop_event
    )


def run_config(
    target: Any,
    config: OptimizeConfig,
    *,
    api_key: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    stop_event: threading.Event | None = None,
    worker_token: str | None = None,
) -> OptimizeResult:
    """:func:`run` with the run described by one :class:`OptimizeConfig`.

    ``worker_token``: for a URL behind a taskapp relay, the lease's worker token (sent in
    the relay's worker-token header with every request).
    """
    from taskapp.core.blocking import call_blocking, in_running_loop

    settings = _settings(config)
    gepa = import_gepa()
    if in_running_loop():
        # A Jupyter cell: run on a helper thread (as `with InProcessTaskApp` and
        # taskapp.evaluate do). Safe for a task app taskapp starts (it has its own loop);
        # a task app at a URL might be served on this very loop, which then cannot answer.
        if isinstance(target, str) and target.startswith(("http://", "https://")):
            logger.warning(
                "taskapp.optimize.run() blocks this thread's running event loop while it "
                "runs; if the task app at %s is served on that loop it cannot answer. Use "
                "`await taskapp.optimize.run_async(...)` there",
                target,
            )
        return call_blocking(
            _run_config,
            target,
            settings,
            gepa,
            api_key,
            on_progress,
            stop_event,
            worker_token,
            name="taskapp-optimize",
        )
    return _run_config(target, settings, gepa, api_key, on_progress, stop_event, worker_token)


def _run_config(
    target: Any,
    settings: _Settings,
    gepa: Any,
    api_key: str | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
    stop_event: threading.Event | None,
    worker_token: str | None = None,
) -> OptimizeResult:
    event = stop_event if stop_event is not None else threading.Event()
    with open_target(target, api_key=api_key, worker_token=worker_token) as endpoint:
        info = _check_health(endpoint, settings.health_timeout)
        _check_seeds(endpoint, settings)
        return _Run(settings, gepa, endpoint, info, event, on_progress).execute()


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
        settings: _Settings,
        gepa: Any,
        endpoint: Endpoint,
        info: dict[str, Any],
        stop_event: threading.Event,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.s = settings
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
        prompt = self.s.seed_prompt
        if prompt is None:
            advertised = advertised_prompts(self.info, self.s.prompt_key)
            if not advertised:
                raise ConfigurationError(
                    f"no seed prompt: pass one (--prompt / --prompt-file), or let the task "
                    f"app at {self.endpoint.label} advertise its default in /info "
                    "(task_metadata.prompts or default_prompt; see docs/optimize.md)"
                )
            logger.info("using the prompt(s) advertised in /info: %s", ", ".join(advertised))
            return advertised
        if isinstance(prompt, str):
            return {self.s.prompt_key: prompt}
        return dict(prompt)

    def _load_previous(self, seed_candidate: dict[str, str]) -> dict[str, Any]:
        folder = self.s.output_dir
        assert folder is not None
        try:
            previous = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {folder / RUN_FILE}: {exc}") from exc
        for key, mine in (
            ("train_seeds", self.s.train),
            ("val_seeds", self.s.val),
            ("seed_candidate", seed_candidate),
        ):
            if previous.get(key) != mine:
                raise ConfigurationError(
                    f"--resume: the run in {str(folder)!r} used other {key.replace('_', ' ')}; "
                    "resume with the same ones, or start a new run in another --out"
                )
        return dict(previous)

    def _write_run_file(self, seed_candidate: dict[str, str], **extra: Any) -> None:
        folder = self.s.output_dir
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            **self.previous,
            "train_seeds": self.s.train,
            "val_seeds": self.s.val,
            "seed_candidate": seed_candidate,
            "target": self.endpoint.label if not self.endpoint.started_here else None,
            "config": self.s.public(),
            **extra,
        }
        self.previous = data
        tmp = folder / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(folder / RUN_FILE)

    # -- the run -----------------------------------------------------------------------

    def execute(self) -> OptimizeResult:
        s = self.s
        seed_candidate = self._seed_candidate()
        history: list[dict[str, Any]] = []
        elapsed_before = 0.0
        if s.resume:
            self.previous = self._load_previous(seed_candidate)
            history = _read_history(s.output_dir)
            elapsed_before = float(self.previous.get("elapsed_s") or 0.0)
        # A new run writes nothing until its baseline is scored: a run that cannot start
        # leaves --out as it was, so the next attempt needs no --resume.

        recorder = ReflectionRecorder(s.reflection_lm)
        sinks: list[Callable[[dict[str, Any]], None]] = []
        writer: JsonlWriter | None = None
        if s.output_dir is not None:
            writer = JsonlWriter(s.output_dir / HISTORY_FILE, truncate=not s.resume)
            sinks.append(writer)

        def remember_baseline(event: dict[str, Any]) -> None:
            if event.get("event") == "baseline":  # lets --resume skip re-scoring the seed
                self._write_run_file(seed_candidate, baseline_val_scores=event["val_scores"])

        sinks.append(remember_baseline)
        if self.on_progress is not None:
            sinks.append(self.on_progress)
        tracker = ProgressTracker(
            budget=s.budget,
            history=history,
            sinks=sinks,
            resuming=s.resume,
            elapsed_before=elapsed_before,
        )
        stopper = RunStopper(
            budget=s.budget,
            iteration_cost=s.iteration_cost,
            patience=s.patience,
            timeout_s=s.timeout_s,
            stop_event=self.stop_event,
            recorder=recorder,
            max_reflection_failures=s.max_reflection_failures,
            tracker=tracker,
        )
        adapter = TaskAppAdapter(
            self.endpoint.url,
            api_key=self.endpoint.api_key,
            seed_candidate=seed_candidate,
            policy_config=s.policy,
            policy_name=s.policy_name,
            env_config=s.env_config,
            env_name=s.env_name,
            concurrency=s.concurrency,
            timeout=s.rollout_timeout,
            run_tag=f"opt-{uuid.uuid4().hex[:8]}",
            worker_token=self.endpoint.worker_token,
        )
        baseline_scores = self.previous.get("baseline_val_scores")
        if s.resume and isinstance(baseline_scores, dict) and baseline_scores:
            scores = [float(baseline_scores.get(str(seed), 0.0)) for seed in s.val]
            adapter.preloaded[(candidate_key(seed_candidate), tuple(s.val))] = (
                self.gepa.EvaluationBatch(
                    outputs=[
                        {"seed": seed, "score": sc} for seed, sc in zip(s.val, scores, strict=True)
                    ],
                    scores=scores,
                )
            )
        status, error, failure = "succeeded", None, None
        gepa_result: Any = None
        try:
            with _first_signal_stops(self.stop_event, self.caught):
                try:
                    gepa_result = self.gepa.optimize(
                        seed_candidate=seed_candidate,
                        trainset=SeedLoader(s.train),
                        valset=SeedLoader(s.val),
                        adapter=adapter,
                        reflection_lm=recorder,
                        candidate_selection_strategy=s.selection,
                        skip_perfect_score=True,
                        perfect_score=s.perfect_score,
                        reflection_minibatch_size=s.minibatch_size,
                        reflection_prompt_template=s.template,
                        stop_callbacks=[stopper],
                        logger=GepaLogger(),
                        run_dir=str(s.output_dir / STATE_DIR) if s.output_dir else None,
                        callbacks=[tracker],
                        track_best_outputs=False,
                        display_progress_bar=False,
                        seed=s.seed,
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
                    if stopper.reason == "interrupted":
                        status = "interrupted"
                    elif stopper.reason == "reflection_failures":
                        status = "failed"
                        error = (
                            f"the reflection model failed {recorder.consecutive_failures} "
                            f"time(s) in a row ({recorder.failures} of {recorder.calls} calls); "
                            f"last error: {recorder.last_error}"
                        )
                        failure = ReflectionModelError(error)
            test_scores = None
            if status == "succeeded" and s.test is not None and tracker.state is not None:
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

    def _test_scores(
        self, adapter: TaskAppAdapter, state: Any, seed_candidate: dict[str, str]
    ) -> dict[str, float]:
        test = self.s.test or []
        best = _best_idx(state)
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
                "budget": self.s.budget,
                "signal": signal.Signals(self.caught[0]).name if self.caught else None,
            }
        )
        result = _build_result(
            self.gepa,
            state,
            settings=self.s,
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
        if self.s.output_dir is not None:
            self._write_run_file(seed_candidate, elapsed_s=result.elapsed_s, status=status)
            result.save(self.s.output_dir)
            if gepa_result is not None:
                with contextlib.suppress(Exception):  # a nice-to-have view
                    (self.s.output_dir / "candidate_tree.html").write_text(
                        gepa_result.candidate_tree_html(), encoding="utf-8"
                    )
        return result


def _best_idx(state: Any) -> int:
    scores = list(state.program_full_scores_val_set)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _build_result(
    gepa: Any,
    state: Any,
    *,
    settings: _Settings,
    seed_candidate: dict[str, str],
    status: str,
    error: str | None,
    stopped_by: str,
    history: list[dict[str, Any]],
    test_scores: dict[str, float] | None,
    elapsed: float,
    reflection: dict[str, Any],
    rollouts: dict[str, Any],
    gepa_result: Any,
) -> OptimizeResult:
    scores = list(state.program_full_scores_val_set)
    best = _best_idx(state)
    best_candidate = dict(state.program_candidates[best])
    key = (
        settings.prompt_key if settings.prompt_key in best_candidate else next(iter(best_candidate))
    )
    candidates = [
        {
            "idx": idx,
            "parents": [p for p in state.parent_program_for_candidate[idx] if p is not None],
            "val_score": scores[idx],
            "discovered_at_calls": state.num_metric_calls_by_discovery[idx]
            if idx < len(state.num_metric_calls_by_discovery)
            else None,
            "candidate": dict(candidate),
        }
        for idx, candidate in enumerate(state.program_candidates)
    ]
    raw = None
    if gepa_result is None:
        with contextlib.suppress(Exception):
            gepa_result = gepa.GEPAResult.from_state(state, seed=settings.seed)
    if gepa_result is not None:
        with contextlib.suppress(Exception):
            raw = gepa_result.to_dict()
    return OptimizeResult(
        status=status,
        best_score=scores[best],
        best_prompt=best_candidate[key],
        best_candidate=best_candidate,
        baseline_score=scores[0],
        seed_candidate=seed_candidate,
        history=list(history),
        test_scores=test_scores,
        best_idx=best,
        candidates=candidates,
        val_scores={int(k): float(v) for k, v in state.prog_candidate_val_subscores[best].items()},
        baseline_val_scores={
            int(k): float(v) for k, v in state.prog_candidate_val_subscores[0].items()
        },
        pareto_front={int(k): sorted(v) for k, v in state.program_at_pareto_front_valset.items()},
        metric_calls=int(state.total_num_evals),
        budget=settings.budget,
        iterations=max(0, int(state.i) + 1),
        stopped_by=stopped_by,
        elapsed_s=round(elapsed, 3),
        train_seeds=settings.train,
        val_seeds=settings.val,
        test_seeds=settings.test,
        reflection=reflection,
        rollouts=rollouts,
        config=settings.public(),
        error=error,
        raw=raw,
    )


def _read_history(folder: Path | None) -> list[dict[str, Any]]:
    if folder is None:
        return []
    path = folder / HISTORY_FILE
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by a hard kill
        if isinstance(event, dict):
            events.append(event)
    return events
