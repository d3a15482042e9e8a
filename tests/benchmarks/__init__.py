"""Performance benchmarks (``nox -s bench`` / ``python -m tests.benchmarks``), not tests."""
