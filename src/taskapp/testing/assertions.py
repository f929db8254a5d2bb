"""The task-app contract as a test assertion: the checks ``taskapp check`` runs.

>>> def test_my_app_keeps_the_contract(taskapp_factory):          # doctest: +SKIP
...     task_app = taskapp_factory(config=build_config())
...     assert_task_app_contract(task_app, seeds=[0, 1])

One engine: :func:`taskapp.check` (``taskapp.core.check``) does the checking; this module
only turns its report into an ``AssertionError`` that lists every violation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskapp.core.check import CheckReport

__all__ = ["assert_task_app_contract", "check_task_app_contract"]


def _target(
    url: Any, api_key: str | None, worker_token: str | None
) -> tuple[str, str | None, str | None]:
    """``url`` may be a running :class:`~taskapp.InProcessTaskApp`: its URL, key and worker
    token are then used unless given. For a URL the key defaults to the user's
    ``$ENVIRONMENT_API_KEY``, as for every verb (:func:`taskapp.core.endpoint.endpoint_of`)."""
    from taskapp.core.endpoint import endpoint_of
    from taskapp.core.lifecycle import InProcessTaskApp

    if not isinstance(url, str | InProcessTaskApp):
        raise TypeError(f"url must be a URL string or a running InProcessTaskApp, got {url!r}")
    endpoint = endpoint_of(url, api_key=api_key, worker_token=worker_token)
    return endpoint.url, endpoint.api_key, endpoint.worker_token


def check_task_app_contract(
    url: Any,
    *,
    api_key: str | None = None,
    worker_token: str | None = None,
    seeds: Sequence[int] | None = None,
    timeout: float = 10.0,
) -> CheckReport:
    """Run the contract checks against ``url`` (a URL or a running ``InProcessTaskApp``)
    and return the :class:`~taskapp.CheckReport` without raising for what the app does
    wrong. ``seeds`` run one rollout each (none by default)."""
    from taskapp.core.check import check

    base, key, token = _target(url, api_key, worker_token)
    return check(base, api_key=key, worker_token=token, seeds=seeds, timeout=timeout)


def assert_task_app_contract(
    url: Any,
    *,
    api_key: str | None = None,
    worker_token: str | None = None,
    seeds: Sequence[int] | None = None,
    timeout: float = 10.0,
) -> CheckReport:
    """Like :func:`check_task_app_contract`, but raise ``AssertionError`` listing every
    failed check (and the full report) when the app breaks the contract. Returns the
    report when it keeps it."""
    report = check_task_app_contract(
        url, api_key=api_key, worker_token=worker_token, seeds=seeds, timeout=timeout
    )
    if not report.ok:
        failures = report.failures
        lines = [
            f"the task app at {report.url} breaks the contract "
            f"({len(failures)} of {len(report.checks)} checks failed):"
        ]
        lines += [f"  - {result.name}: {result.detail}" for result in failures]
        if not report.checks:
            lines.append("  - no check could run")
        lines += ["", "full report:", report.format()]
        raise AssertionError("\n".join(lines))
    return report
