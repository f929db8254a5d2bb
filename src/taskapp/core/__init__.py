"""taskapp's core: hookspecs, plugin registry, lifecycle, and the mechanisms every plugin
shares (ports, readiness polling, secret redaction, process management).

Import submodules directly (``taskapp.core.backends``, ``taskapp.core.errors``, ...);
this package itself imports nothing, so ``import taskapp`` stays cheap.
"""
