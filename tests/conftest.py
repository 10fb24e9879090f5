"""Shared test set-up: import path, hypothesis profiles, the NNCodec oracle fixture."""

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def oracle():
    from oracle import NNCodecOracle

    if not NNCodecOracle.available():
        pytest.skip(f"NNCodec 2.1.3 oracle not available: {NNCodecOracle.reason}")
    o = NNCodecOracle()
    yield o
    o.close()


# tests/test_engine.py: make `nnc` importable from a source checkout (without
# `pip install`), but never shadow an installed or already importable nnc.
try:
    import nnc  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
