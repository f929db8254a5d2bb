"""The support-intents data set as an Inspect AI task, and taskapp's stand-in model.

Inspect loads this package through its ``inspect_ai`` entry point (taskapp's
pyproject), which registers:

* the model provider ``taskapp`` (:mod:`.standin`): ``taskapp/standin`` is a **stand-in**
  for a real model, deterministic and offline, reacting to the prompt the way the bundled
  support-intents offline baseline does;
* the task ``taskapp/intents`` (:mod:`.task`): 400 customer-support messages, the intent
  as the target, Inspect's ``match()`` scorer.

Nothing here is imported by ``import taskapp``.
"""

from taskapp.examples.inspect_intents import standin, task

__all__ = ["standin", "task"]
