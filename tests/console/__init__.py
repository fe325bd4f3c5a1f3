"""The web console in a real browser (tests/console/conftest.py)."""
