"""The jobs page as a user meets it: a real headless Chromium on a real backend.

One ``taskapp backend serve`` child process (two workers) runs real jobs against toy task
apps in this process (the reflection model is the offline stand-in): one kept running
(slow task app), one that succeeds with test scores, one that fails after its first
improvement (its task app starts refusing the key), a second config for the comparison,
and 500 more (queued and cancelled) for the list. Every page is served under a strict
Content-Security-Policy (as a hardened deployment would send it) and the tests fail on any
violation; no request carries the key in its URL. Screenshots go to docs/img/ (shown in
docs/jobs.md). One browser for the module.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from tests.jobs.test_jobs import KEY, Backend
from tests.optimize._optimize_helpers import ToyTask

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )

REPO = Path(__file__).resolve().parents[2]
IMG = REPO / "docs" / "img"
SCRATCH = Path(tempfile.gettempdir()) / "taskapp-jobs-page-screenshots"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")  # fmt: skip
BULK = 500
SCENARIO = 6  # running, succeeded, failed, other, pareto, blocker
TERMINAL = ("succeeded", "failed", "cancelled")

TOML = """
[prompt_learning]
algorithm = "gepa"
[prompt_learning.policy]
model = "{model}"
[prompt_learning.gepa]
env_name = "toy-keywords"
[prompt_learning.gepa.evaluation]
train_seeds = "0-39"
val_seeds = "100-123"
{test}
[prompt_learning.gepa.rollout]
budget = {budget}
max_concurrent = 8
minibatch_size = {minibatch}
[prompt_learning.gepa.mutation]
llm_provider = "stand-in"
[prompt_learning.gepa.population]
patience_generations = {patience}
"""


class BreakableTask(ToyTask):
    """The toy task; after ``break_after`` rollouts it refuses every key (a job fails then,
    past its first improvements)."""

    def __init__(self, break_after: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.break_after = break_after
        self.served = 0

    async def rollout(self, request: Any, http_request: Any) -> dict[str, Any]:
        self.served += 1
        if self.served > self.break_after:
            from fastapi import HTTPException

            raise HTTPException(403, detail="key revoked")
        return await super().rollout(request, http_request)


class ObjectivesTask(ToyTask):
    """The toy task reporting two objectives per rollout (synth-containers'
    ``objective_scores``): accuracy, and brevity (shorter prompts score higher)."""

    async def rollout(self, request: Any, http_request: Any) -> dict[str, Any]:
        out = await super().rollout(request, http_request)
        prompt = str(request.policy.config.get("prompt", ""))
        out["objective_scores"] = [
            {"objective": "accuracy", "value": out["metrics"]["outcome_score"]},
            {"objective": "brevity", "value": max(0.0, 1.0 - len(prompt) / 600)},
        ]
        return out


def submit(backend: Backend, app: InProcessTaskApp, *, name: str, budget: int, model: str = "keyword-policy",
           minibatch: int = 3, test: bool = False, client: httpx.Client | None = None) -> str:  # fmt: skip
    toml = TOML.format(budget=budget, model=model, minibatch=minibatch, patience=100_000 if budget > 5000 else 50,
                       test='test_pool = "300-323"' if test else "")  # fmt: skip
    body = {"config_toml": toml, "config_name": f"/configs/{name}", "task_app_url": app.url,
            "task_app_api_key": app.api_key}  # fmt: skip
    if client is None:
        return str(backend.api("POST", "/api/jobs", json=body)["id"])
    response = client.post(f"{backend.url}/api/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


class World:
    """The backend, its task apps and the jobs the tests look at."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.ids: dict[str, str] = {}
        self.bulk: list[str] = []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    backend = Backend(tmp_path_factory.mktemp("page") / "jobs.sqlite3").start("--workers", "2")
    slow, fast, breakable = (
        ToyTask(latency=0.05),
        ToyTask(latency=0.002),
        BreakableTask(break_after=130, latency=0.01),
    )
    try:
        with InProcessTaskApp(config=slow.config(), port=0, api_key="slow-key-123456") as slow_app, \
             InProcessTaskApp(config=fast.config(), port=0, api_key="fast-key-123456") as fast_app, \
             InProcessTaskApp(config=breakable.config(), port=0, api_key="brk-key-1234567") as brk_app, \
             InProcessTaskApp(config=ObjectivesTask(latency=0.002).config(), port=0, api_key="obj-key-1234567") as obj_app:  # fmt: skip
            w = World(backend)
            # Queue order is run order, two at a time: the long job and the quick ones,
            # then a second long job; the bulk jobs queued behind them never start.
            w.ids["running"] = submit(backend, slow_app, name="long-sweep.toml", budget=50_000)
            w.ids["succeeded"] = submit(
                backend, fast_app, name="toy-gepa.toml", budget=150, test=True
            )
            w.ids["failed"] = submit(backend, brk_app, name="flaky-app.toml", budget=400)
            w.ids["other"] = submit(backend, fast_app, name="toy-gepa-small-batch.toml", budget=100,
                                    minibatch=2, model="keyword-policy-v2")  # fmt: skip
            w.ids["pareto"] = submit(backend, obj_app, name="two-objectives.toml", budget=100)
            w.ids["blocker"] = submit(backend, slow_app, name="long-sweep.toml", budget=50_000)
            headers = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(headers=headers, trust_env=False, timeout=30) as client:

                def one(i: int) -> str:
                    return submit(backend, slow_app, name=f"sweep-{'abcd'[i % 4]}.toml", budget=100 + i,
                                  model=f"policy-{i % 5}", client=client)  # fmt: skip

                def cancel(job_id: str) -> None:
                    client.post(f"{backend.url}/api/jobs/{job_id}/cancel").raise_for_status()

                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    w.bulk = list(pool.map(one, range(BULK)))
                    list(pool.map(cancel, w.bulk[::2]))
            improved = lambda j: (j["best_score"] or 0) > (j["baseline_score"] or 1)  # noqa: E731
            for name in ("succeeded", "failed", "other", "pareto"):
                backend.wait_for(w.ids[name], lambda j: j["status"] in TERMINAL, timeout=90)
            backend.wait_for(w.ids["blocker"], lambda j: j["status"] == "running", timeout=30)
            backend.wait_for(w.ids["running"], improved, timeout=60)
            slow.latency = 0.5  # the two long jobs go on, slowly: the machine stays responsive
            yield w
            backend.stop()  # while the task apps still answer: the running jobs stop at once
    finally:
        if backend.proc is not None and backend.proc.poll() is None:
            backend.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-extensions", "--no-first-run",
                  "--disable-sync"],
        )  # fmt: skip
        try:
            yield chromium
        finally:
            chromium.close()


class Tab:
    """A browser tab on the backend: pages get a strict CSP; violations, console errors
    and request URLs are recorded."""

    def __init__(self, browser: Any, world: World, width: int = 1280, height: int = 800) -> None:
        self.url = world.backend.url
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route(re.compile(re.escape(self.url) + r"/(?!api/|static/).*"), self._with_csp)
        self.context.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        self.page = self.context.new_page()
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _with_csp(self, route: Any) -> None:
        response = route.fetch()
        route.fulfill(
            response=response, headers={**response.headers, "content-security-policy": CSP}
        )

    def open(self, path: str, *, key: bool = True) -> Any:
        self.page.goto(self.url + path + (f"#key={KEY}" if key else ""))
        return self.page

    def close(self) -> None:
        try:
            assert self.page.evaluate("window.__csp") == []
            assert self.errors == []
            assert not [
                u for u in self.requests if KEY in u.split("#")[0]
            ]  # never in path or query
        finally:
            self.context.close()


@pytest.fixture
def tab(browser: Any, world: World) -> Iterator[Tab]:
    t = Tab(browser, world)
    yield t
    t.close()


def shot(page: Any, name: str, **kw: Any) -> None:
    """A screenshot, checked for content. It lands in docs/img/ (shown in docs/jobs.md)
    only with TASKAPP_UPDATE_SCREENSHOTS=1, so a test run leaves the checkout as it was."""
    folder = IMG if os.environ.get("TASKAPP_UPDATE_SCREENSHOTS") == "1" else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    target = kw.pop("element", page)
    target.screenshot(path=str(folder / name), **kw)
    assert (folder / name).stat().st_size > 5_000


def test_list_pages_filters_sorts_and_searches_500_jobs(tab: Tab, world: World) -> None:
    page = tab.open("/jobs")
    rows = page.locator("#jobs tbody tr.job")
    expect(page.locator("#list-summary")).to_have_text(
        re.compile(rf"^{BULK + SCENARIO} jobs; showing 1–100")
    )
    assert rows.count() == 100
    assert page.locator("#page-info").inner_text() == "page 1 of 6"  # counted before all arrive
    expect(page.locator("#list-summary")).not_to_contain_text("more…")  # the rest arrived
    assert page.url == tab.url + "/jobs"  # the key left the address bar
    first = rows.first
    assert first.locator(".config").inner_text().startswith("sweep-")
    assert first.locator(".model").inner_text().startswith("policy-")
    assert (
        first.locator("td.id a").get_attribute("href") == f"/jobs/{first.get_attribute('data-id')}"
    )
    shot(page, "jobs-list.png")
    page.locator("#next").click()
    assert page.locator("#page-info").inner_text() == "page 2 of 6"
    assert "page=2" in page.url
    # filter + search + sort: the URL carries them and a new tab opens the same view
    page.select_option("#status-filter", "succeeded")
    assert rows.count() == 3
    page.select_option("#status-filter", "cancelled")
    page.fill("#q", "sweep-a")
    page.select_option("#sort", "oldest")
    assert page.locator("#list-summary").inner_text().startswith(f"{BULK + SCENARIO} jobs (")
    configs = rows.locator(".config").all_inner_texts()
    assert configs and set(configs) == {"sweep-a.toml"}
    assert set(rows.locator(".status").all_inner_texts()) == {"cancelled"}
    shared = page.url
    assert "status=cancelled" in shared and "q=sweep-a" in shared and "sort=oldest" in shared
    other = tab.context.new_page()  # a new tab: no key in its session storage yet
    other.goto(shared)
    other.locator("#login").wait_for()
    other.fill("#key", KEY)
    other.locator("#login button").click()
    other.locator("#jobs tbody tr.job").first.wait_for()
    expect(other.locator("#list-summary")).not_to_contain_text("more…")
    assert other.locator("#jobs tbody tr.job .config").all_inner_texts() == configs
    assert other.locator("#q").input_value() == "sweep-a"
    other.close()


def test_a_running_job_updates_live_with_its_best_prompt_and_no_layout_jump(
    tab: Tab, world: World
) -> None:
    job_id = world.ids["running"]
    page = tab.open(f"/jobs/{job_id}")
    page.locator("#d-status.status-running").wait_for()
    page.locator("#curve polyline.best").wait_for()
    note = page.locator("#best-note").inner_text()
    assert "so far" in note, note  # a candidate better than the seed, before the run ends
    assert "- refund:" in page.locator("#best-prompt").inner_text()
    page.locator("#tab-diff").click()
    assert page.locator("#diff .add").count() >= 1
    page.locator("#tab-best").click()
    # chart: ticks on both axes, a budget line, a baseline, a legend
    assert (
        page.locator("#curve .tick.x").count() >= 4 and page.locator("#curve .tick.y").count() >= 4
    )
    # the budget: a line, or a note while the run is far from it (a long budget)
    assert (
        page.locator("#curve line.budget").count() + page.locator("#curve .budget-note").count()
        == 1
    )
    assert page.locator("#curve line.baseline").count() == 1
    assert "budget" in (page.locator("#curve .legend").text_content() or "")
    # events are sentences, not JSON cut mid-word
    events = page.locator("#events li").all_inner_texts()
    assert any("seed prompt scored" in e for e in events)
    assert not any("{" in e for e in events)
    # live: new events arrive over the event stream; nothing moves while they do
    boxes = {
        sel: page.locator(sel).bounding_box()
        for sel in ("#curve", "#best-prompt", "#seeds", "#candidates-box", "#events")
    }
    before = page.locator("#events li").count()
    expect(page.locator(f"#events li >> nth={before}")).to_be_attached(timeout=20_000)
    page.wait_for_timeout(300)
    for sel, box in boxes.items():
        assert page.locator(sel).bounding_box() == box, sel
    streams = [
        u for u in tab.requests if u.endswith("/events/stream?after=0") or "/events/stream?" in u
    ]
    assert streams, tab.requests
    polls = [u for u in tab.requests if re.search(r"/api/jobs(\?|$)", u)]
    assert len(polls) <= 2  # the list is loaded once, then followed over /api/stream
    shot(page, "jobs-running.png")


def test_a_succeeded_job_shows_test_scores_seeds_and_candidates(tab: Tab, world: World) -> None:
    page = tab.open(f"/jobs/{world.ids['succeeded']}")
    page.locator("#d-status.status-succeeded").wait_for()
    page.locator("#seeds table.matrix").wait_for()
    summary = page.locator("#d-summary").inner_text()
    assert re.search(r"test: baseline → best\s+0\.\d{3} → 0\.\d{3}", summary), summary
    assert "the result" in page.locator("#best-note").inner_text()
    assert page.locator("#candidates tbody tr").count() >= 2
    assert page.locator("#curve line.budget").count() == 1  # budget 150: on the scale
    # the seed matrix comes from the backend: one row per candidate, one column per seed
    matrix = world.backend.api("GET", f"/api/jobs/{world.ids['succeeded']}/seeds")
    assert len(matrix["seeds"]) == 24 and matrix["fixed"]
    assert page.locator("#seeds table.matrix tr").count() == 1 + len(matrix["candidates"])
    assert page.locator("#seeds th.fixed").count() == len(matrix["fixed"])
    assert f"fixed {len(matrix['fixed'])} seed(s)" in page.locator("#seeds-summary").inner_text()
    assert "config toy-gepa.toml" in page.locator("#d-labels").inner_text()
    shot(page, "jobs-succeeded.png", full_page=True)


def test_a_failed_job_keeps_its_best_prompt_and_says_why(tab: Tab, world: World) -> None:
    page = tab.open(f"/jobs/{world.ids['failed']}")
    page.locator("#d-status.status-failed").wait_for()
    job = world.backend.api("GET", f"/api/jobs/{world.ids['failed']}")
    assert job["best_score"] > job["baseline_score"]  # it had improved before it failed
    error = page.locator("#d-summary dd.error").inner_text()
    assert "rejected the API key" in error, error
    assert "- refund:" in page.locator("#best-prompt").inner_text()
    assert page.locator("#events li.k-status-failed").count() == 1
    actions = page.locator("#actions button")
    assert "Retry" in actions.all_inner_texts()
    shot(page, "jobs-failed.png")


def test_a_pareto_front_when_the_app_reports_two_objectives(tab: Tab, world: World) -> None:
    job_id = world.ids["pareto"]
    matrix = world.backend.api("GET", f"/api/jobs/{job_id}/seeds")
    assert all(set(c["objectives"]) == {"accuracy", "brevity"} for c in matrix["candidates"])
    page = tab.open(f"/jobs/{job_id}")
    page.locator("#d-status.status-succeeded").wait_for()
    page.locator("#pareto circle").first.wait_for()
    assert page.locator("#pareto circle").count() == len(matrix["candidates"])
    assert page.locator("#pareto polyline.front").count() == 1
    assert "brevity" in (page.locator("#pareto").text_content() or "")
    shot(page, "jobs-pareto.png", element=page.locator("#pareto-box"))
    # a single-objective job has no Pareto view
    page.goto(f"{tab.url}/jobs/{world.ids['succeeded']}")
    page.locator("#d-status.status-succeeded").wait_for()
    assert page.locator("#pareto-box").is_hidden()


def test_compare_two_jobs_from_the_list(tab: Tab, world: World) -> None:
    page = tab.open("/jobs?status=succeeded")
    page.locator("#jobs tbody tr.job").nth(1).wait_for()
    assert page.locator("#compare-btn").is_disabled()
    for job_id in (world.ids["succeeded"], world.ids["other"]):
        page.locator(f'tr.job[data-id="{job_id}"] .pick').check()
    page.locator("#compare-btn").click()
    page.wait_for_url(re.compile(r"/compare\?a=pl_\w+&b=pl_\w+$"))
    page.locator("#c-curve polyline.best").nth(1).wait_for()
    config = page.locator("#c-config").inner_text()
    assert "budget" in config and "minibatch_size" in config and "policy.model" in config
    assert "seed_prompt" not in config  # equal settings hidden ...
    page.locator("#c-all").check()
    expect(page.locator("#c-config")).to_contain_text("train_seeds")  # ... until asked for
    assert page.locator("#c-diff div").count() >= 1
    assert "better on" in page.locator("#c-seeds").inner_text()
    shot(page, "jobs-compare.png", full_page=True)
    # the comparison is a URL: a reload shows it again
    page.reload()
    page.locator("#c-curve polyline.best").nth(1).wait_for()


def test_actions_are_clicked_with_confirmation(tab: Tab, world: World) -> None:
    job_id = world.ids["running"]
    page = tab.open(f"/jobs/{job_id}")
    page.locator("#d-status.status-running").wait_for()
    buttons = page.locator("#actions button")
    assert page.locator('#actions button[data-action="cancel"]').is_enabled()
    served = page.evaluate("document.body.dataset.actions").split()
    for name in ("pause", "stop"):  # enabled exactly when the backend serves the route
        assert page.locator(f'#actions button[data-action="{name}"]').is_enabled() == (
            name in served
        )
    assert "Cancel" in buttons.all_inner_texts()
    page.locator('#actions button[data-action="cancel"]').click()
    page.locator("#confirm[open]").wait_for()
    page.locator("#confirm-no").click()  # kept: nothing sent
    assert world.backend.api("GET", f"/api/jobs/{job_id}")["status"] == "running"
    page.locator('#actions button[data-action="cancel"]').click()
    page.locator("#confirm-yes").click()
    page.locator("#d-status.status-cancelled").wait_for(timeout=30_000)
    assert world.backend.api("GET", f"/api/jobs/{job_id}")["status"] == "cancelled"
    # a cancelled job has no result; its best prompt so far stays on show
    expect(page.locator("#best-note")).to_contain_text("the best before it was cancelled")
    # a queued job is cancelled at once, from its own page
    queued = world.bulk[-1]  # the last in the queue (a worker was freed above)
    page.locator("#back").click()
    page.goto(f"{tab.url}/jobs/{queued}")
    page.locator("#d-status.status-queued").wait_for()
    page.locator('#actions button[data-action="cancel"]').click()
    page.locator("#confirm-yes").click()
    page.locator("#d-status.status-cancelled").wait_for()


def test_keyboard_only(tab: Tab, world: World) -> None:
    page = tab.open("/jobs?status=succeeded")
    page.locator("#jobs tbody tr.job").nth(1).wait_for()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.press("Escape")
    page.keyboard.press("j")
    focused = page.evaluate("document.activeElement.closest('tr').dataset.id")
    page.keyboard.press("j")
    second = page.evaluate("document.activeElement.closest('tr').dataset.id")
    assert focused != second
    page.keyboard.press("k")
    assert page.evaluate("document.activeElement.closest('tr').dataset.id") == focused
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/jobs/{focused}\?status=succeeded$"))  # the filter is kept
    page.locator("#d-status.status-succeeded").wait_for()
    page.keyboard.press("Escape")
    page.wait_for_url(re.compile(r"/jobs\?status=succeeded$"))


def test_readable_in_a_narrow_window(browser: Any, world: World) -> None:
    t = Tab(browser, world, width=420, height=800)
    try:
        page = t.open("/jobs")
        page.locator("#jobs tbody tr.job").first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 420
        assert page.locator("#jobs th.opt").first.is_hidden()
        shot(page, "jobs-narrow.png")
        page.goto(f"{t.url}/jobs/{world.ids['succeeded']}")
        page.locator("#d-status.status-succeeded").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 420
        box = page.locator("#curve").bounding_box()
        assert box is not None and box["width"] <= 420
    finally:
        t.close()


def test_unknown_job_and_static_files(world: World) -> None:
    """``/jobs/ID`` is the page (not 404 JSON); the page's files are real files."""
    url = world.backend.url
    page = httpx.get(f"{url}/jobs/pl_nope", trust_env=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "<script>" not in page.text and "style=" not in page.text
    js = httpx.get(f"{url}/static/jobs.js", trust_env=False)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "http://" not in js.text and "https://" not in js.text  # nothing from another host
    assert httpx.get(f"{url}/static/../store.py", trust_env=False).status_code == 404
    assert httpx.get(f"{url}/static/nope.js", trust_env=False).status_code == 404
    started = time.monotonic()
    with httpx.stream("GET", f"{url}/api/stream", trust_env=False) as response:
        assert response.status_code == 401  # the stream needs the key like every /api route
    assert time.monotonic() - started < 5


def test_pause_resume_stop_retry_delete_from_the_page(tab: Tab, world: World) -> None:
    api = world.backend.api
    page = tab.open(f"/jobs/{world.ids['blocker']}")
    page.locator("#d-status.status-running").wait_for()
    page.locator('#actions button[data-action="pause"]').click()  # not destructive: no question
    page.locator("#d-status.status-paused").wait_for(timeout=30_000)
    assert api("GET", f"/api/jobs/{world.ids['blocker']}")["status"] == "paused"
    page.locator('#actions button[data-action="resume"]').click()
    expect(page.locator("#d-status")).to_have_text(re.compile("queued|running"))
    # stop: the running job ends now, a success with its best prompt
    running = api("GET", "/api/jobs?status=running&limit=1")["jobs"][0]["id"]
    page.goto(f"{tab.url}/jobs/{running}")
    page.locator("#d-status.status-running").wait_for()
    page.locator('#actions button[data-action="stop"]').click()
    expect(page.locator("#confirm-text")).to_contain_text("keep the best prompt")
    page.locator("#confirm-yes").click()
    page.locator("#d-status.status-succeeded").wait_for(timeout=30_000)
    # retry: the failed job is queued again
    page.goto(f"{tab.url}/jobs/{world.ids['failed']}")
    page.locator("#d-status.status-failed").wait_for()
    page.locator('#actions button[data-action="retry"]').click()
    expect(page.locator("#events")).to_contain_text(
        "retry of a failed job"
    )  # live, from its events
    # delete: asks first, then the job is gone and the list is shown
    gone = world.bulk[0]  # cancelled in the fixture
    page.goto(f"{tab.url}/jobs/{gone}")
    page.locator("#d-status.status-cancelled").wait_for()
    page.locator('#actions button[data-action="delete"]').click()
    expect(page.locator("#confirm-text")).to_contain_text("cannot be undone")
    page.locator("#confirm-yes").click()
    page.wait_for_url(re.compile(r"/jobs$"))
    expect(page.locator(f'tr.job[data-id="{gone}"]')).to_have_count(0)
    with pytest.raises(httpx.HTTPStatusError, match="404"):
        api("GET", f"/api/jobs/{gone}")
