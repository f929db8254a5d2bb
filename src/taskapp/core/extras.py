"""How to install an optional extra, said one way everywhere.

taskapp is installed from a clone (it is not on the package index yet), so the command
that works is ``pip install '.[extra]'`` run in the clone; ``pip install 'taskapp[extra]'``
works once taskapp is published. Errors and help texts print :func:`install_command`.
"""

from __future__ import annotations

__all__ = ["install_command"]


def install_command(extra: str) -> str:
    """The command that installs ``extra``, as errors and help texts print it."""
    return (
        f"pip install '.[{extra}]' in your taskapp clone (or pip install 'taskapp[{extra}]' "
        "once taskapp is on the package index)"
    )
