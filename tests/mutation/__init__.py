"""Targeted mutation check: single-line changes to core invariants that the named tests must catch.

Not part of the default test run (no `test_*.py` here). Run before a release:
`.venv/bin/python -m tests.mutation.run` (see `run.py`).
"""
