"""Builtin server runners: ``thread`` (uvicorn in a thread) and ``subprocess``."""
