"""The version of taskapp: the one place it is written.

Every layer may import it (``from taskapp._version import __version__``); the build
(hatch's ``dynamic = ["version"]``) reads it from here and ``taskapp.__version__``
re-exports it. Standard library only, nothing else.
"""

__version__ = "0.1.0"
