"""Helpers the tests share: local servers, the TF Serving stand-in, small models, the CLI runner."""

from pathlib import Path

# The checkout the tests run from (the directory holding Pulumi.yaml).
REPO_ROOT = Path(__file__).resolve().parents[2]
