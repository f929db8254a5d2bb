"""``python -m taskapp``: the same as the ``taskapp`` command."""

from taskapp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
