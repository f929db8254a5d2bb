"""Interop tests: real synth-ai releases, each in its own cached virtual environment."""
