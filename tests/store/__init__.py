"""The store: its contract on every backend (test_contract.py), each backend's own promises."""
