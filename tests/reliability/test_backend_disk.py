"""Issue 24 item 6: a full disk under the job backend, for real (a small tmpfs, as root).

* the scratch run directory fills up while a job runs: the job is queued again saying
  ``disk full at PATH``, keeps its events and checkpoint, and resumes by itself when
  space comes back (it used to end ``failed`` with "internal error: OSError");
* the database's own disk fills up: writes answer 503 ``store_error`` saying the disk is
  full, reads go on answering 200, and writes work again once there is room.

``taskapp backend serve`` is a real child process; the task app is the toy task app on a
real socket; the reflection model is the ``stand-in`` provider.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskapp import InProcessTaskApp
from tests.helpers import run_child

from ..optimize._optimize_helpers import ToyTask
from ._backend import Backend, assert_envelope, store_with_a_job, toy_toml


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only), unmounted at the end."""
    folder.mkdir()
    mounted = run_child(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr!r}")
    try:
        yield folder
    finally:
        if run_child(["umount", str(folder)], capture_output=True, check=False).returncode:
            run_child(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Write ``folder/filler`` until the filesystem is full; its path."""
    path = folder / "filler"
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):  # the last bytes, less than a chunk
            while out.write(b"\0" * 512):
                pass
    return path


def events(backend: Backend, job_id: str) -> list[dict[str, Any]]:
    answer = backend.request("GET", f"/api/jobs/{job_id}/events", params={"limit": 5000})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["events"])


def test_24_6_a_full_scratch_disk_queues_the_job_and_it_resumes_with_nothing_lost(
    tmp_path: Path,
) -> None:
    task = ToyTask(latency=0.02)
    with (
        tmpfs(tmp_path / "scratch", "4m") as scratch,
        InProcessTaskApp(config=task.config(), port=0, api_key="toy-key-123456") as app,
        Backend(tmp_path / "jobs.sqlite3", "--runs-dir", str(scratch / "runs")) as backend,
    ):
        answer = backend.submit(
            config_toml=toy_toml(budget=260), task_app_url=app.url, task_app_api_key=app.api_key
        )
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        backend.wait_for(job_id, ("running",))
        deadline = time.monotonic() + 60
        while sum(e["kind"] == "iteration" for e in events(backend, job_id)) < 2:
            job = backend.request("GET", f"/api/jobs/{job_id}").json()
            assert job["status"] == "running", job
            assert time.monotonic() < deadline, "no two iterations in 60 s"
            time.sleep(0.1)
        filler = fill(scratch)
        try:
            job = backend.wait_for(job_id, ("queued", "failed", "succeeded"), timeout=60)
            assert job["status"] == "queued", job  # was: failed, "internal error: OSError"
            reason = str(job["status_reason"])
            assert "disk full at" in reason and str(scratch) in reason, reason
            before = events(backend, job_id)
            kinds = [e["kind"] for e in before]
            assert "storage_error" in kinds, kinds
            assert [e["seq"] for e in before] == list(range(1, len(before) + 1))
            best = backend.request("GET", f"/api/jobs/{job_id}/result").json()
            assert best.get("best_so_far"), best  # the best prompt so far is kept
            time.sleep(1.5)  # no space yet: the job waits, queued
            job = backend.request("GET", f"/api/jobs/{job_id}").json()
            assert job["status"] == "queued", job
        finally:
            filler.unlink()
        job = backend.wait_for(job_id, ("succeeded", "failed"), timeout=90)
        assert job["status"] == "succeeded", job
        after = events(backend, job_id)
        assert after[: len(before)] == before  # nothing recorded before was lost
        assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
        kinds = [e["kind"] for e in after]
        assert kinds.count("baseline") == 1, kinds  # resumed from the checkpoint
        log = "".join(backend.output)
        assert "claims paused" in log and "claims resume" in log, log[-2000:]
        assert "internal error" not in log, log[-2000:]


def test_24_6_a_full_database_disk_answers_503_and_reads_go_on(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "db", "3m") as folder,
        Backend(folder / "jobs.sqlite3", "--workers", "0") as backend,
    ):
        first = backend.submit(config_toml=toy_toml(), task_app_url="http://127.0.0.1:9")
        assert first.status_code == 201, first.text
        job_id = first.json()["id"]
        filler = fill(folder)
        try:
            padding = "# " + "x" * 60000 + "\n"  # each submit needs new pages
            codes = []
            message = ""
            for _ in range(40):
                answer = backend.submit(
                    config_toml=toy_toml() + padding, task_app_url="http://127.0.0.1:9"
                )
                codes.append(answer.status_code)
                if answer.status_code != 201:
                    message = assert_envelope(answer, 503)  # never a 500
                    assert answer.json()["detail"]["error"]["code"] == "store_error"
                    assert answer.headers.get("retry-after"), answer.headers
                    break
            assert message, f"no write failed on a full disk: {codes}"
            assert "full" in message and "free some disk space" in message, message
            listed = backend.request("GET", "/api/jobs")
            assert listed.status_code == 200, listed.text
            assert job_id in [job["id"] for job in listed.json()["jobs"]]
            shown = backend.request("GET", f"/api/jobs/{job_id}")
            assert shown.status_code == 200 and shown.json()["status"] == "queued", shown.text
            assert backend.request("GET", f"/api/jobs/{job_id}/events").status_code == 200
            assert backend.request("GET", "/").status_code == 200  # the page
        finally:
            filler.unlink()
        again = backend.submit(config_toml=toy_toml(), task_app_url="http://127.0.0.1:9")
        assert again.status_code == 201, again.text
        assert backend.proc is not None and backend.proc.poll() is None


def test_24_6_storage_errors_are_told_from_the_jobs_own_errors() -> None:
    from taskapp.jobs.pool import describe_storage_error, storage_error

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/j/gepa_state.bin.tmp")
    # gepa re-raises a failed state save as a new OSError without the errno
    rewrapped = OSError(f"{full}\n\nHint: standard pickle failed")
    rewrapped.__cause__ = full
    assert rewrapped.errno is None
    assert storage_error(rewrapped) is full
    for code in (errno.EDQUOT, errno.EIO, errno.EROFS):
        assert storage_error(OSError(code, os.strerror(code))) is not None
    assert storage_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None
    assert storage_error(OSError(errno.ENOENT, "gone")) is None
    assert storage_error(ValueError("bad")) is None
    message = describe_storage_error(full, Path("/runs/j"))
    assert message.startswith("disk full at /runs/j/gepa_state.bin.tmp (No space left")
    assert "resumes from its last checkpoint" in message
    quota = describe_storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"), Path("/r"))
    assert quota.startswith("disk quota exceeded at /r (Disk quota exceeded)")


def test_24_6_a_job_that_meets_storage_errors_again_and_again_fails_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for the pool's test write but not for the run: the job is not claimed, run
    from its checkpoint and queued again for ever; the fifth fault in a row fails it with
    the advice, a checkpoint in between starts the count again, and retry queues it."""
    from taskapp.jobs.pool import MAX_STORAGE_FAULTS, JobPool, _Run

    runs = tmp_path / "runs"
    full = OSError(errno.ENOSPC, "No space left on device", str(runs / "j" / "state.bin"))

    def run_in(self: JobPool, job: dict[str, Any], run: _Run, run_dir: Path) -> None:
        raise full  # a stand-in for a disk that fills up at every attempt

    monkeypatch.setattr(JobPool, "_run_in", run_in)
    with store_with_a_job(tmp_path) as (store, job_id):
        pool = JobPool(store, runs_dir=runs, workers=0)

        def attempt(*, checkpoint: bool = False) -> dict[str, Any]:
            claimed = store.claim(pool.owner, 60)
            assert claimed is not None and claimed["id"] == job_id
            run = _Run(job_id)
            if checkpoint:  # an iteration ends before the fault: the count starts again
                pool._progress(run, runs / job_id, {"event": "iteration"})
            pool._execute(claimed, run)
            job = store.get(job_id)
            assert job is not None
            return job

        for _ in range(MAX_STORAGE_FAULTS - 1):
            assert attempt()["status"] == "queued"
        assert attempt(checkpoint=True)["status"] == "queued"  # fault 1 of a new count
        for _ in range(MAX_STORAGE_FAULTS - 2):
            assert attempt()["status"] == "queued"
        job = attempt()
        assert job["status"] == "failed", job
        error = str(job["error"])
        assert error.startswith(f"disk full at {full.filename} (No space left"), error
        assert f"{MAX_STORAGE_FAULTS} times in a row" in error and "jobs retry" in error, error
        kinds = [e["kind"] for e in store.events(job_id, after=0, limit=100)]
        assert kinds.count("storage_error") == 2 * MAX_STORAGE_FAULTS - 1, kinds
        assert (store.control(job_id, "retry") or {}).get("status") == "queued"
