"""The prompt-learning job workflow, as a user runs it.

``taskapp backend serve`` runs as a real child process (the installed console script) on
a free port with its own SQLite file; task apps run in this test process on real sockets;
the reflection model is the offline stand-in. Covered: the seed's example script, restart
and SIGKILL mid-job (resumed, nothing run twice), cancel, bad input and faults, two
backends on one database, the CLI (`taskapp jobs`), and the web page in a real headless
Chromium.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskapp import ConfigurationError, InProcessTaskApp, PromptLearningJob
from tests.helpers import TASKAPP, BackendChild, run_child
from tests.jobs._procs import child_env
from tests.optimize._optimize_helpers import SEED_PROMPT, ToyTask, toy_toml

REPO = Path(__file__).resolve().parents[2]
KEY = "backend-test-key-0123456789"
EXAMPLE_TOML = REPO / "examples" / "support_intents_gepa.toml"


class Backend(BackendChild):
    """``taskapp backend serve --port 0`` in a child process (options given to ``start``)."""

    db: Path

    def __init__(self, db: Path) -> None:
        super().__init__("serve", db, env=child_env(), cwd=db.parent)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    server = Backend(tmp_path / "jobs.sqlite3").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One backend for the tests that neither restart nor kill it."""
    server = Backend(tmp_path_factory.mktemp("shared") / "jobs.sqlite3").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def toy_app() -> Iterator[tuple[ToyTask, InProcessTaskApp]]:
    task = ToyTask(latency=0.05)
    with InProcessTaskApp(config=task.config(), port=0, api_key="toy-key-123456") as app:
        yield task, app


def toy_config(tmp_path: Path, budget: int = 150, health_timeout: float | None = None) -> Path:
    path = tmp_path / f"toy-{budget}-{len(list(tmp_path.glob('toy-*')))}.toml"
    path.write_text(toy_toml(budget, health_timeout=health_timeout))
    return path


def taskapp_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_child(
        [TASKAPP, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


# -- the seed's workflow -----------------------------------------------------------------


def test_seed_example_runs_and_survives_a_restart(backend: Backend) -> None:
    done = run_child(
        [sys.executable, str(REPO / "examples" / "prompt_learning_job.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(BACKEND_URL=backend.url, TASK_APP_PORT="0"),
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    baseline = float(re.search(r"Baseline score: ([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    best = float(re.search(r"Best score: ([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    assert "Status: succeeded" in done.stdout
    assert best > baseline
    job_id = re.search(r"Job submitted: (\S+)", done.stdout).group(1)  # type: ignore[union-attr]
    assert KEY not in done.stdout + done.stderr

    assert backend.stop() == 0
    assert "stopped" in backend.output
    backend.start()
    listed = taskapp_cli("jobs", "list", "--backend-url", backend.url, "--json")
    assert listed.returncode == 0, listed.stderr
    (job,) = json.loads(listed.stdout)["jobs"]
    assert (job["id"], job["status"], job["attempts"]) == (job_id, "succeeded", 1)
    assert job["best_score"] == pytest.approx(best, abs=1e-3)
    shown = taskapp_cli("jobs", "show", job_id, "--backend-url", backend.url)
    assert shown.returncode == 0 and "succeeded" in shown.stdout and "best prompt:" in shown.stdout
    logs = taskapp_cli("jobs", "logs", job_id, "--follow", "--backend-url", backend.url)
    assert logs.returncode == 0, logs.stderr
    assert "baseline" in logs.stdout and "rollouts" in logs.stderr  # the progress bar
    assert f"job {job_id}: succeeded" in logs.stderr
    # secrets stay out of the database's public answers and the backend's output
    result = backend.api("GET", f"/api/jobs/{job_id}/result")
    assert "task_app_key" not in result["job"] and KEY not in json.dumps(result)
    assert KEY not in backend.output


@pytest.mark.parametrize(
    ("sig", "reason"),
    [(signal.SIGKILL, "backend restarted"), (signal.SIGTERM, "backend stopped")],
    ids=["SIGKILL", "SIGTERM"],
)
def test_a_stopped_backend_resumes_the_job_without_rescoring(
    backend: Backend,
    toy_app: tuple[ToyTask, InProcessTaskApp],
    tmp_path: Path,
    sig: signal.Signals,
    reason: str,
) -> None:
    """SIGKILL mid-job (the job is left "running") or SIGTERM (the job stops after its
    step and is queued again): the next start resumes it from GEPA's run directory."""
    task, app = toy_app
    client = PromptLearningJob(backend.url, KEY)
    job_id = client.submit_sync(toy_config(tmp_path, budget=260), task_app_url=app.url,
                                task_app_api_key=app.api_key)  # fmt: skip
    backend.wait_for(
        job_id,
        lambda job: job["status"] == "running" and job["metric_calls"] > 30,  # past baseline
    )
    status = backend.stop(sig)
    assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    backend.start()
    if sig == signal.SIGKILL:
        assert "resuming 1 job(s)" in backend.output
    client = PromptLearningJob(backend.url, KEY)  # a new port after the restart
    result = client.poll_until_complete_sync(job_id, timeout=90, interval=0.2)
    assert result.succeeded, result.error
    job = backend.api("GET", f"/api/jobs/{job_id}")
    assert job["attempts"] == 2 and job["metric_calls"] <= 260
    events = backend.api("GET", f"/api/jobs/{job_id}/events?limit=5000")["events"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("baseline") == 1  # the seed prompt was scored once
    assert {"status": "queued", "reason": reason} in [e["data"] for e in events]
    seed_val = [r for r in task.requests if r["policy"]["config"].get("prompt") == SEED_PROMPT
                and 100 <= r["env"]["seed"] <= 129]  # fmt: skip
    assert len(seed_val) == 30
    assert result.best_score is not None and result.baseline_score is not None
    assert result.best_score >= result.baseline_score


def test_cancel_stops_a_running_job_within_seconds(
    shared: Backend, toy_app: tuple[ToyTask, InProcessTaskApp], tmp_path: Path
) -> None:
    _, app = toy_app
    client = PromptLearningJob(shared.url, KEY)
    job_id = client.submit_sync(toy_config(tmp_path, budget=2000), task_app_url=app.url,
                                task_app_api_key=app.api_key)  # fmt: skip
    shared.wait_for(job_id, lambda job: job["metric_calls"] > 0)
    # a long poll, waiting for the status to leave "running", answers when it does
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long_poll = pool.submit(client.get_status_sync, job_id, wait=30, unless="running")
        time.sleep(0.3)
        assert not long_poll.done()
        started = time.monotonic()
        cancel = taskapp_cli("jobs", "cancel", job_id, "--backend-url", shared.url)
        assert cancel.returncode == 0 and "cancel" in cancel.stdout
        assert long_poll.result(timeout=15)["status"] == "cancelled"
    assert time.monotonic() - started < 10
    job = shared.api("GET", f"/api/jobs/{job_id}")
    assert job["status"] == "cancelled" and job["error"] is None  # a cancel is no error
    assert job["status_reason"] == "cancelled on request while running"


def test_run_in_process_job(shared: Backend, tmp_path: Path) -> None:
    """The seed's one-call helper: start the app in-process, submit, wait, stop."""
    import asyncio

    from taskapp import run_in_process_job
    from taskapp.examples.support_intents import build_config

    config = tmp_path / "job.toml"
    config.write_text(EXAMPLE_TOML.read_text())
    seen: list[str] = []
    result = asyncio.run(
        run_in_process_job(
            config,
            backend_url=shared.url,
            api_key=KEY,
            config_factory=build_config,
            overrides={"gepa.rollout.budget": 150, "policy.api_key": "sk-policy-secret-123"},
            timeout=90,
            poll_interval=0.2,
            on_status=lambda job: seen.append(job["status"]),
        )
    )
    assert result.succeeded, result.error
    assert result.best_score is not None and result.baseline_score is not None
    assert result.best_score > result.baseline_score
    assert result.best_prompt and seen[-1] == "succeeded"
    job = shared.api("GET", f"/api/jobs/{result.job_id}")
    assert job["budget"] == 150 and job["metric_calls"] <= 150
    # a secret in the policy reaches the task app but never the API's answers
    assert job["config"]["policy"]["api_key"].startswith("[redacted sha256:")
    listed = shared.api("GET", "/api/jobs")
    assert "sk-policy-secret-123" not in json.dumps(listed) + json.dumps(result.raw)


def test_a_task_app_behind_the_relay_gets_its_worker_token(shared: Backend, tmp_path: Path) -> None:
    """InProcessTaskApp(tunnel_mode="synthtunnel"): the job is sent the relay URL and the
    lease's worker token, and the backend's rollouts reach the app through the relay."""
    import asyncio

    from taskapp import run_in_process_job
    from tests.relay._relay_helpers import ADMIN, running_relay

    task = ToyTask()
    with running_relay() as relay:
        result = asyncio.run(
            run_in_process_job(
                toy_config(tmp_path, budget=100),
                backend_url=shared.url,
                api_key=KEY,
                config=task.config(),
                tunnel_mode="synthtunnel",
                tunnel_options={"relay_url": relay.url, "admin_token": ADMIN},
                timeout=90,
                poll_interval=0.2,
            )
        )
    assert result.succeeded, result.error
    job = shared.api("GET", f"/api/jobs/{result.job_id}")
    assert job["task_app_url"].startswith(relay.url + "/s/rt_")
    assert len(task.requests) >= job["metric_calls"] > 0


# -- bad input and faults ----------------------------------------------------------------


def test_bad_configs_are_refused_at_submit(shared: Backend, tmp_path: Path) -> None:
    client = PromptLearningJob(shared.url, KEY)
    bad = tmp_path / "bad.toml"
    bad.write_text('[prompt_learning]\nalgorithm = "gepa"\n[prompt_learning.gepa]\nseed = 1 2\n')
    with pytest.raises(ConfigurationError, match=r"bad.toml: malformed TOML at line 4, key "
                       r"prompt_learning.gepa.seed"):  # fmt: skip
        client.submit_sync(bad, task_app_url="http://127.0.0.1:9")
    mipro = tmp_path / "mipro.toml"
    mipro.write_text('[prompt_learning]\nalgorithm = "mipro"\n')
    with pytest.raises(ConfigurationError, match="taskapp runs 'gepa' only"):
        client.submit_sync(mipro, task_app_url="http://127.0.0.1:9")
    # the backend checks too (a client that skips the checks)
    answer = httpx.post(shared.url + "/api/jobs", headers={"Authorization": f"Bearer {KEY}"},
                        json={"config_toml": mipro.read_text(), "task_app_url": "http://x"},
                        trust_env=False)  # fmt: skip
    assert answer.status_code == 400
    assert "taskapp runs 'gepa' only" in answer.json()["error"]["message"]
    relay = "https://relay.example.test/s/rt_abc123"
    with pytest.raises(ConfigurationError, match="relay URL: callers need the lease's worker"):
        client.submit_sync(toy_config(tmp_path), task_app_url=relay)
    # wrong backend key: 401, no key echoed
    wrong = PromptLearningJob(shared.url, "not-the-key-000")
    with pytest.raises(Exception, match="401") as caught:
        wrong.submit_sync(toy_config(tmp_path), task_app_url="http://127.0.0.1:9")
    assert "not-the-key-000" not in str(caught.value)


def test_task_app_faults_fail_the_job_with_a_clear_error(
    shared: Backend, toy_app: tuple[ToyTask, InProcessTaskApp], tmp_path: Path
) -> None:
    _, app = toy_app
    client = PromptLearningJob(shared.url, KEY)
    outside = toy_config(tmp_path)
    outside.write_text(
        outside.read_text().replace('val_seeds = "100-129"', 'val_seeds = "990-1010"')
    )
    closed = "http://127.0.0.1:9"
    cases = {
        "outside": (outside, app.url, app.api_key, r"val_seeds 1000-1010 outside the task set"),
        "unreachable": (toy_config(tmp_path, health_timeout=1.0), closed, "k", r"did not answer"),
        "wrong key": (toy_config(tmp_path), app.url, "wrong-key-999", r"rejected"),
    }
    ids = {name: client.submit_sync(cfg, task_app_url=url, task_app_api_key=key)
           for name, (cfg, url, key, _) in cases.items()}  # fmt: skip
    for name, (_, _, _, pattern) in cases.items():
        result = client.poll_until_complete_sync(ids[name], timeout=60, interval=0.2)
        assert result.status == "failed", name
        assert result.error and re.search(pattern, result.error), (name, result.error)
        assert "wrong-key-999" not in result.error


def test_two_backends_on_one_database(shared: Backend) -> None:
    second = Backend(shared.db).start(expect_ready=False)
    assert second.proc is not None
    _, text = second.proc.communicate(timeout=30)
    assert second.proc.returncode == 1
    assert "another taskapp backend uses the job database" in text
    assert f"pid {shared.proc.pid}" in text  # type: ignore[union-attr]
    assert shared.api("GET", "/health")["status"] == "ok"  # the first one is unharmed
    assert isinstance(shared.api("GET", "/api/jobs")["total"], int)


def test_key_file_must_be_private(tmp_path: Path) -> None:
    key_file = tmp_path / "backend.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    done = run_child(
        [TASKAPP, "backend", "serve", "--port", "0", "--db", str(tmp_path / "j.db"),
         "--api-key-file", str(key_file)],
        capture_output=True, text=True, timeout=30, env=child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "accessible by other users (mode 0644)" in done.stderr and KEY not in done.stderr


# -- the web page, in a real browser -----------------------------------------------------


def test_page_shows_a_job_to_the_end_in_chromium(
    shared: Backend, toy_app: tuple[ToyTask, InProcessTaskApp], tmp_path: Path
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    _, app = toy_app
    client = PromptLearningJob(shared.url, KEY)
    job_id = client.submit_sync(toy_config(tmp_path, budget=200), task_app_url=app.url,
                                task_app_api_key=app.api_key)  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{shared.url}/#key={KEY}")
            row = page.locator(f'tr.job[data-id="{job_id}"]')
            row.wait_for(timeout=10_000)
            seen = {row.locator(".status").inner_text()}
            page.locator(f'tr.job[data-id="{job_id}"] .status-succeeded').wait_for(timeout=60_000)
            seen.add("succeeded")
            assert page.url == f"{shared.url}/"  # the key left the address bar
            row.locator("td.id a").click()  # the job's own page (tests/jobs/test_page.py: more)
            page.wait_for_url(f"{shared.url}/jobs/{job_id}")
            page.locator("#candidates tbody tr").first.wait_for(timeout=10_000)
            assert page.locator("#d-status").inner_text() == "succeeded"
            assert page.locator("#curve polyline.best").count() == 1
            assert page.locator("#curve line.baseline").count() == 1
            assert page.locator("#candidates tbody tr").count() >= 2
            assert page.locator("#diff .add").count() >= 1  # the best prompt differs
            best = float(row.locator(".best").inner_text())
            baseline = float(row.locator(".baseline").inner_text())
            assert best > baseline
            shot = tmp_path / "jobs-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert seen & {"queued", "running", "succeeded"}


def test_a_full_database_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    """SQLite's own disk-full condition (a page cap on this connection stands in for a full
    disk): the write fails with a StoreError that says so, and what was committed before
    is intact."""
    from taskapp.jobs.store import SqliteJobStore as JobStore
    from taskapp.jobs.store import StoreError

    store = JobStore(tmp_path / "jobs.sqlite3", owner=True)
    try:
        job_id, _ = store.create({"budget": 10}, task_app_url="http://127.0.0.1:9",
                              task_app_key="k" * 12, worker_token=None, warnings=[])  # fmt: skip
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")

        def fill() -> None:
            for _ in range(1000):
                store.add_event(job_id, "iteration", {"pad": "x" * 4000}, metric_calls=5)

        with pytest.raises(StoreError, match="database or disk is full; free some disk space"):
            fill()
        written = len(store.events(job_id, limit=5000))
        assert store.get(job_id)["status"] == "queued"  # type: ignore[index]
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3", owner=True)
    try:
        assert len(reopened.events(job_id, limit=5000)) == written >= 1
    finally:
        reopened.close()


# -- config typos are said at submit (issue 21 item 6) ------------------------------------


def typo_config(tmp_path: Path) -> Path:
    path = toy_config(tmp_path, budget=2000)
    path.write_text(
        path.read_text().replace("minibatch_size = 3", "minibatch_size = 3\nbudgte = 5")
    )
    return path


def test_submit_says_a_config_typo_before_the_job_runs(
    shared: Backend,
    toy_app: tuple[ToyTask, InProcessTaskApp],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, app = toy_app
    client = PromptLearningJob(shared.url, KEY)
    with caplog.at_level("WARNING", logger="taskapp.jobs"):
        job_id = client.submit_sync(
            typo_config(tmp_path), task_app_url=app.url, task_app_api_key=app.api_key
        )
    try:
        hint = "unknown key prompt_learning.gepa.rollout.budgte is ignored; did you mean 'budget'?"
        assert client.warnings == [hint]
        assert any(hint in r.getMessage() for r in caplog.records), caplog.text
    finally:
        client.control_sync("cancel", job_id)
    cli = taskapp_cli(
        "jobs", "submit", str(typo_config(tmp_path)), "--task-app-url", str(app.url),
        "--backend-url", shared.url,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"taskapp jobs submit: warning: {tmp_path}" in cli.stderr
    assert cli.stderr.count("did you mean 'budget'?") == 1, cli.stderr
    taskapp_cli("jobs", "cancel", cli.stdout.strip(), "--backend-url", shared.url)
