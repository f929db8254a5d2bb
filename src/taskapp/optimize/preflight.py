"""Before a run: the task app's health, its advertised prompts and its seeds.

``check_health`` waits for ``GET /health`` and reads ``GET /info``; ``advertised_prompts``
finds the default prompt(s) there; ``check_seeds`` refuses seeds outside the task set
``GET /task_info`` describes.
"""

from __future__ import annotations

from typing import Any

from taskapp.core.client import TransportError
from taskapp.core.endpoint import Endpoint
from taskapp.core.errors import (
    ApiKeyRejectedError,
    ConfigurationError,
    HealthCheckError,
    TaskAppRequestError,
)
from taskapp.core.logs import get_logger
from taskapp.core.seeds import format_seeds, known_seeds
from taskapp.optimize.errors import TaskAppUnavailableError
from taskapp.optimize.resolved import ResolvedRun

logger = get_logger("taskapp.optimize")


def advertised_prompts(info: Any, prompt_key: str = "prompt") -> dict[str, str]:
    """The optimizable prompts a task app advertises in ``GET /info``, with defaults.

    Looked up, first found wins, in the seed candidate of synth-containers' ``GET
    /program`` (``info["program"]``, read by :func:`check_health`), in ``prompts`` (a
    mapping of policy.config key to default text) or ``default_prompt`` (the text of
    ``prompt_key``) at the top level, in ``task_info.task_metadata`` and in ``dataset``
    (what ``describe_taskset`` returns).
    """
    if not isinstance(info, dict):
        return {}
    program = info.get("program")  # synth-containers' GET /program, when the app serves it
    seed = program.get("seed_candidate") if isinstance(program, dict) else None
    if isinstance(seed, dict):
        found = {str(k): v for k, v in seed.items() if isinstance(v, str) and v.strip()}
        if found:
            return found
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


def task_name(info: Any) -> str | None:
    """The task's name from ``GET /info`` (``service.name``, else a task's name or id).

    >>> task_name({"service": {"app_id": "toy", "name": "Toy keywords"}})
    'Toy keywords'
    """
    if not isinstance(info, dict):
        return None
    service = info.get("service")
    service = service if isinstance(service, dict) else {}
    task = service.get("task", info.get("task"))
    task = task if isinstance(task, dict) else {}
    for value in (service.get("name"), service.get("app_id"), task.get("name"), task.get("id")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def check_health(endpoint: Endpoint, timeout: float) -> dict[str, Any]:
    """/health then /info (with synth-containers' ``GET /program`` under ``"program"`` when
    the app serves one); returns the info (empty when /info is not a JSON object)."""
    try:
        endpoint.wait_healthy(timeout, what="the task app", error=TaskAppUnavailableError)
    except ApiKeyRejectedError as exc:
        raise TaskAppUnavailableError(
            f"{exc.message} For a URL target, set ENVIRONMENT_API_KEY (or --api-key-env) to "
            "the task app's key."
        ) from exc
    except HealthCheckError as exc:
        raise TaskAppUnavailableError(exc.message) from exc
    try:
        with endpoint.client(timeout=timeout) as client:
            info = client.info()
            program = client.request("GET", "/program")  # a synth-containers prompt program
            if program.status == 200 and isinstance(program.body, dict):
                info = {**info, "program": program.body}
            return info
    except (TaskAppRequestError, TransportError) as exc:
        logger.info("GET /info failed (%s); continuing without it", exc)
        return {}


def check_seeds(endpoint: Endpoint, run: ResolvedRun) -> None:
    """Refuse seeds outside the task set when ``GET /task_info`` says which seeds exist.

    Without this, train seeds the task app rejects (HTTP 422) would burn the whole budget
    on failed minibatches and the run would "succeed" with the baseline.
    """
    try:
        with endpoint.client(timeout=run.config.health_timeout) as client:
            body = client.task_info()
    except TaskAppRequestError as exc:
        logger.info("GET /task_info failed (%s); seeds not checked", exc)
        return
    known = known_seeds(body.get("taskset") if isinstance(body, dict) else None)
    if known is None:
        return
    problems = []
    for name, seeds in (
        ("train_seeds", run.train),
        ("val_seeds", run.val),
        ("test_seeds", run.test or []),
    ):
        outside = [seed for seed in seeds if seed not in known]
        if outside:
            problems.append(f"{name} {format_seeds(sorted(outside))}")
    if problems:
        raise ConfigurationError(
            f"{'; '.join(problems)} outside the task set of {endpoint.label} (its seeds "
            f"are {format_seeds(sorted(known))})"
        )
