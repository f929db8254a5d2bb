"""Builtin tunnel backends."""
