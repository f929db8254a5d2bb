"""The backend's web page: an HTML shell and its script and style sheet, served as files.

``static/index.html`` is served at ``/``, ``/jobs``, ``/jobs/ID`` and ``/compare`` (the
page routes itself from the address, so each view is a URL that can be shared);
``static/jobs.js`` and ``static/jobs.css`` at ``/static/NAME``. Nothing inline, nothing
from another host: the page works offline and under a strict Content-Security-Policy
(``default-src 'self'``).

The page asks for the backend key once and keeps it in the tab's ``sessionStorage``; it
sends it as ``Authorization: Bearer`` (also for the server-sent event streams, which it
reads with ``fetch``), never in a URL's path or query.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable
from importlib import resources

__all__ = ["ACTIONS", "ASSETS", "asset", "page_html"]

#: the files under /static/, with their media types
ASSETS = {
    "jobs.js": "text/javascript; charset=utf-8",
    "jobs.css": "text/css; charset=utf-8",
}

#: the job actions the page has buttons for (the route ``POST /api/jobs/ID/ACTION``,
#: ``delete`` being ``DELETE /api/jobs/ID``); a button is enabled when its route exists
ACTIONS = ("pause", "resume", "stop", "cancel", "retry", "delete")


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("taskapp.jobs").joinpath("static", name).read_bytes()


def asset(name: str) -> tuple[bytes, str] | None:
    """``(content, media type)`` of a file under /static/, or None for an unknown name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return None
    return _read(name), media_type


def page_html(actions: Iterable[str]) -> str:
    """The page, telling the script which actions this backend serves."""
    names = " ".join(name for name in ACTIONS if name in set(actions))
    return _read("index.html").decode("utf-8").replace("__ACTIONS__", html.escape(names))
