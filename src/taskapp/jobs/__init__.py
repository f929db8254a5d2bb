"""Self-hosted prompt-learning jobs: a backend (``taskapp backend serve``) that runs
``[prompt_learning]`` jobs with taskapp's GEPA engine, and its client.

* :mod:`.store`: the SQLite job store (WAL, one backend per database file)
* :mod:`.pool`: the bounded worker pool (resume after restart, cancel)
* :mod:`.service`: the HTTP API (FastAPI) and :mod:`.page`, the web page at ``/``
* :mod:`.backend`: :func:`serve`, what ``taskapp backend serve`` runs
* :mod:`.client`: :class:`PromptLearningJob` and :func:`run_in_process_job`

Names are imported on first use (``import taskapp.jobs`` is cheap). See docs/jobs.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskapp.core.importing import lazy_exports

if TYPE_CHECKING:
    from taskapp.jobs.client import (
        JobBackendError,
        PromptLearningJob,
        PromptLearningResult,
        run_in_process_job,
    )

_LAZY: dict[str, str] = {
    "JobBackendError": "taskapp.jobs.client",
    "PromptLearningJob": "taskapp.jobs.client",
    "PromptLearningResult": "taskapp.jobs.client",
    "run_in_process_job": "taskapp.jobs.client",
}

__all__ = ["JobBackendError", "PromptLearningJob", "PromptLearningResult", "run_in_process_job"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
