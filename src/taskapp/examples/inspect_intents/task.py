"""``taskapp/intents``: the support-intents data set as an Inspect task.

The same 400 messages as the bundled ``support-intents`` task app (seed % 4 == 3 is the
test split), each sample's target its intent, Inspect's ``match()`` scorer, and the
starting prompt as the task's ``system_message``: the prompt an optimizer rewrites.
``examples/inspect_intents.py`` is the same task as a file (``FILE@TASK``).
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate, system_message

from taskapp.examples.support_intents.app import DEFAULT_PROMPT
from taskapp.examples.support_intents.dataset import load_examples

__all__ = ["intents", "samples"]


def samples() -> list[Sample]:
    return [
        Sample(
            input=example.text,
            target=example.label,
            id=example.id,
            metadata={"split": example.split},
        )
        for example in load_examples()
    ]


@task
def intents() -> Task:
    """Classify a customer-support message into one of 10 intents."""
    return Task(
        dataset=samples(),
        solver=[system_message(DEFAULT_PROMPT), generate()],
        scorer=match(location="exact"),
    )
