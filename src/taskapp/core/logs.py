"""Loggers of taskapp: every one passes its records through the secret redactor.

Logger names: ``taskapp`` (lifecycle: INFO start, URL, stop; WARNING conflicts and
callback exceptions), ``taskapp.health``/``taskapp.ports`` (DEBUG checks),
``taskapp.plugins``, ``taskapp.process``, ``taskapp.server.*``, ``taskapp.tunnel.*``.
taskapp never configures handlers itself (except the command line).
"""

from __future__ import annotations

import logging
import time

from taskapp.core.secrets import RedactingFilter, redact

__all__ = ["JsonFormatter", "get_logger"]

_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with secret redaction attached (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        import json

        return json.dumps(payload, ensure_ascii=False)
