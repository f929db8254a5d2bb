"""Builtin loaders: app object, TaskAppConfig, config factory, ``.py`` path, import string.

All are ``trylast``, so a third-party ``load_app`` implementation sees each target first.
"""
