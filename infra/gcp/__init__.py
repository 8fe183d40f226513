"""The GCP stack: one ComponentResource per module, assembled by `stack.py`."""
