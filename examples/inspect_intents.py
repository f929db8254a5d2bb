"""An Inspect AI task file: the support-intents data set, served by taskapp.

    taskapp eval examples/inspect_intents.py@intents --split test
    taskapp optimize examples/inspect_intents.py@intents --train-seeds 0-39 --val-seeds 40-79
    inspect eval examples/inspect_intents.py@intents --model taskapp/standin

Without a model named (policy.config.model, or INSPECT_EVAL_MODEL), rollouts run on
taskapp's offline stand-in model ``taskapp/standin``; name any Inspect model
(``openai/gpt-4o-mini``, ...) to use it, with its key in your environment.
"""

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate, system_message

from taskapp.examples.support_intents.app import DEFAULT_PROMPT
from taskapp.examples.support_intents.dataset import load_examples


@task
def intents() -> Task:
    """Classify a customer-support message into one of 10 intents."""
    return Task(
        dataset=[
            Sample(input=e.text, target=e.label, id=e.id, metadata={"split": e.split})
            for e in load_examples()
        ],
        solver=[system_message(DEFAULT_PROMPT), generate()],
        scorer=match(location="exact"),
    )
