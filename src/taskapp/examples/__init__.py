"""Example task apps shipped inside taskapp, runnable offline by name.

``taskapp serve support-intents`` and ``taskapp eval support-intents`` look the name up in
:data:`BUNDLED` and load the import string it maps to, exactly as if the user had typed
``taskapp eval taskapp.examples.support_intents:build_config``.

>>> resolve("support-intents")
'taskapp.examples.support_intents:build_config'
"""

from __future__ import annotations

__all__ = ["BUNDLED", "DESCRIPTIONS", "resolve"]

#: Bundled example name -> ``"module:attr"`` import string of its config builder.
BUNDLED: dict[str, str] = {
    "support-intents": "taskapp.examples.support_intents:build_config",
}

#: One line per bundled example, shown by ``taskapp serve --help`` and in error messages.
DESCRIPTIONS: dict[str, str] = {
    "support-intents": (
        "intent classification of 400 customer-support messages (10 intents, "
        "train 300 / test 100); offline baseline policy, or any OpenAI-compatible model"
    ),
}


def resolve(name: str) -> str | None:
    """The import string of bundled example ``name`` (``_`` and ``-`` are the same), or None."""
    return BUNDLED.get(name.strip().lower().replace("_", "-"))
