"""Builtin plugins: loaders, server runners and tunnel backends.

Each module here is an ordinary taskapp plugin, registered by name from
``taskapp.core.plugins.DEFAULT_PLUGINS``; a third-party distribution provides the same
hooks through the ``taskapp`` entry-point group.
"""
