"""Inspect AI tasks as task apps (``taskapp serve evals.py@my_task``; docs/inspect.md).

The modules here import Inspect (``inspect-ai``, the extra ``.[inspect]``); only
:mod:`taskapp.plugins.loaders.inspect` reaches them, once a target names an Inspect task,
so ``import taskapp`` and every other target work without Inspect installed.

* :mod:`.tasks`: load a task from ``FILE@NAME`` or ``package/name``; what it declares
  (its prompt, its sandbox) and why it cannot run.
* :mod:`.runner`: run rollouts through Inspect's own ``eval_async``, in one live eval run.
* :mod:`.app`: the task app (a :class:`taskapp.TaskAppConfig`).
* :mod:`.standin`: the offline **stand-in** policy model, an Inspect model provider
  (``taskapp/standin``) registered through Inspect's ``inspect_ai`` entry point.
"""
