"""The bundled example task app: customer-support intent classification, fully offline.

Serve it with ``taskapp serve support-intents`` or evaluate it with
``taskapp eval support-intents``; ``examples/support_intents_app.py`` in the repository is
a standalone copy to start your own task app from.

>>> config = build_config()
>>> config.app_id
'support-intents'
"""

from __future__ import annotations

from taskapp.examples.support_intents.app import (
    APP_ID,
    DEFAULT_PROMPT,
    SupportIntentsTask,
    build_config,
)
from taskapp.examples.support_intents.dataset import LABELS, load_examples

__all__ = [
    "APP_ID",
    "DEFAULT_PROMPT",
    "LABELS",
    "SupportIntentsTask",
    "build_config",
    "load_examples",
]
