"""Load an Inspect task the way ``inspect eval`` does, and read what it declares.

Targets: ``FILE@NAME`` (a ``@task`` function in a file) and ``package/name`` (a task an
installed package registers through Inspect's ``inspect_ai`` entry point, e.g.
``inspect_evals/gsm8k`` or taskapp's own ``taskapp/intents``). Loading goes through
Inspect's own loader, so a task here is the task ``inspect eval`` would run.

Errors are :class:`taskapp.core.errors.AppLoadError` saying what to do: an unknown name
lists the tasks of the file (or package), a task needing a sandbox this machine cannot
give names it, a task whose construction fails shows its error.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taskapp.core.errors import AppLoadError

__all__ = ["DeclaredPrompt", "LoadedTask", "declared_prompt", "load_task", "split_target"]

#: Sandbox types that can run without extra infrastructure checks (``local`` runs tool
#: calls on this machine); ``docker`` needs the docker command. Others are refused.
_SANDBOX_NEEDS = {"local": None, "docker": "docker"}


@dataclasses.dataclass(frozen=True)
class DeclaredPrompt:
    """The prompt a task declares in its solver chain, which the candidate replaces.

    ``kind`` is ``system_message`` or ``prompt_template`` (the candidate replaces that
    solver's template), or ``none`` (the candidate is put in front as a system message).
    """

    kind: str
    text: str
    index: int = -1
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoadedTask:
    task: Any  # inspect_ai.Task
    spec: str
    name: str
    prompt: DeclaredPrompt


def split_target(spec: str) -> tuple[Path | None, str]:
    """``("evals.py", "my_task")`` for ``evals.py@my_task``; ``(None, spec)`` otherwise."""
    file, at, name = spec.rpartition("@")
    if at and file:
        return Path(file).expanduser().resolve(), name
    return None, spec


def load_task(spec: str, task_args: Mapping[str, Any] | None = None) -> LoadedTask:
    """The Inspect task ``spec`` names, built with ``task_args`` (Inspect's ``-T``)."""
    from inspect_ai._eval.loader import load_tasks

    file, name = split_target(spec)
    if file is not None:
        _check_name_in_file(file, name)
        target = f"{file}@{name}"
    else:
        target = spec
    try:
        tasks = load_tasks([target], dict(task_args or {}))
    except Exception as exc:
        raise AppLoadError(f"Inspect could not build the task {spec!r}: {_message(exc)}") from None
    if not tasks:
        raise AppLoadError(_unknown_registered(spec))
    task = tasks[0]
    check_sandbox(task, spec)
    return LoadedTask(task=task, spec=spec, name=str(task.name), prompt=declared_prompt(task))


def _check_name_in_file(file: Path, name: str) -> None:
    from inspect_ai._util.decorator import parse_decorators

    try:
        found = parse_decorators(file, "task")
    except Exception as exc:
        raise AppLoadError(f"Inspect could not read {str(file)!r}: {_message(exc)}") from None
    names = sorted({str(name) for name, _ in found})
    if name in names:
        return
    listed = ", ".join(names) if names else "none (no @task function)"
    raise AppLoadError(
        f"no Inspect task {name!r} in {str(file)!r}; its tasks: {listed}. "
        f"Spell the target FILE@TASK, e.g. {file.name}@{names[0] if names else 'my_task'}"
    )


def _unknown_registered(spec: str) -> str:
    from inspect_ai._util.registry import registry_find, registry_info

    package = spec.partition("/")[0]
    found = sorted(
        str(registry_info(obj).name)
        for obj in registry_find(lambda info: info.type == "task")
        if str(registry_info(obj).name).startswith(f"{package}/")
    )
    listed = ", ".join(found[:40]) if found else "none"
    return (
        f"no Inspect task {spec!r}: the package {package!r} registers these tasks: {listed}. "
        "A task in a file is spelled FILE@TASK"
    )


def check_sandbox(task: Any, spec: str) -> None:
    """Refuse, at load, a task whose sandbox this machine cannot provide."""
    specs = [getattr(task, "sandbox", None)]
    dataset = getattr(task, "dataset", None) or []
    specs.extend(getattr(sample, "sandbox", None) for sample in dataset)
    for sandbox in specs:
        if sandbox is None:
            continue
        kind = str(getattr(sandbox, "type", sandbox))
        if kind not in _SANDBOX_NEEDS:
            raise AppLoadError(
                f"the Inspect task {spec!r} needs a {kind!r} sandbox; taskapp runs tasks "
                "without a sandbox or with the 'local' or 'docker' sandbox only "
                "(see docs/inspect.md, Limits)"
            )
        program = _SANDBOX_NEEDS[kind]
        if program is not None and shutil.which(program) is None:
            raise AppLoadError(
                f"the Inspect task {spec!r} needs a {kind!r} sandbox, and the {program!r} "
                f"command is not installed here (PATH={os.environ.get('PATH', '')!r}). "
                f"Install {program} or run a task that needs no sandbox"
            )


def declared_prompt(task: Any) -> DeclaredPrompt:
    """The first ``system_message(...)`` or ``prompt_template(...)`` of the task's solver
    chain (what an optimizer should rewrite), else ``none``."""
    from inspect_ai._util.registry import registry_info, registry_params
    from inspect_ai.solver._chain import unroll

    for index, solver in enumerate(unroll(task.solver)):
        try:
            name = str(registry_info(solver).name).rpartition("/")[2]
            params = dict(registry_params(solver))
        except (ValueError, AttributeError):
            continue
        template = params.pop("template", None)
        if name in ("system_message", "prompt_template") and isinstance(template, str):
            return DeclaredPrompt(name, template, index, params)
    return DeclaredPrompt("none", "")


def _message(exc: BaseException) -> str:
    """An Inspect exception as one line (PrerequisiteError keeps its text in .message)."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
