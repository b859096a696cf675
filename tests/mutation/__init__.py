"""Targeted mutation check: single-line changes to core invariants that the named tests must catch.

The check itself is not part of the default test run; run it before a release with
`.venv/bin/python -m tests.mutation.run` (see `run.py`). The default run only checks, in
`test_mutations.py`, that every mutation still applies to the current code.
"""
