"""``candidate_tree.html`` from a real run opens offline in a real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskapp import InProcessTaskApp
from taskapp.optimize import run as optimize
from tests.optimize._optimize_helpers import ToyTask

CHROMIUM = Path("/usr/bin/chromium")


def test_candidate_tree_draws_every_candidate_with_no_network(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    task = ToyTask()
    out = tmp_path / "run"
    with InProcessTaskApp(config=task.config(), api_key="toy-key-123456") as app:
        result = optimize(app, train_seeds="0-39", val_seeds="100-119", budget=120, output_dir=out,
                          reflection_lm="stand-in", patience=None)  # fmt: skip
    page_file = out / "candidate_tree.html"
    text = page_file.read_text()
    assert "<script" not in text and "src=" not in text and "@import" not in text
    saved = json.loads((out / "result.json").read_text())
    assert len(saved["candidates"]) == len(result.candidates) >= 2
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])  # fmt: skip
        try:
            context = browser.new_context(offline=True)
            requests: list[str] = []
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            assert page.locator("svg rect").count() == len(result.candidates)
            best = page.locator("svg text", has_text=f"#{result.best_idx} ")
            assert "best" in (best.text_content() or "")
            assert page.locator("section pre").count() >= len(result.candidates)
            assert requests == [page_file.as_uri()]  # nothing else was fetched
        finally:
            browser.close()
