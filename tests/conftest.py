"""Shared test configuration: Hypothesis profiles and the compiled Elman kernel fixture.

Profiles: ``ci`` (30 derandomized examples), ``dev`` (60 examples, the default locally) and
``intense`` (1000 examples). Pick one with ``HYPOTHESIS_PROFILE=<name>``; otherwise ``ci`` is
used when the ``CI`` environment variable is truthy and ``dev`` when it is not.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=30,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.register_profile("intense", deadline=None, max_examples=1000)


def _truthy(value: str | None) -> bool:
    """Whether an environment variable value means "on" (unset, "", 0, false, no, off do not)."""
    return value is not None and value.strip().lower() not in {"", "0", "false", "no", "off"}


def _default_profile() -> str:
    """Profile named by HYPOTHESIS_PROFILE, else ``ci`` under a truthy CI, else ``dev``."""
    explicit = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if explicit:
        return explicit
    return "ci" if _truthy(os.environ.get("CI")) else "dev"


settings.load_profile(_default_profile())


@pytest.fixture(scope="session")
def elman_kernel() -> Any:
    """The generated Elman RNN kernel, compiled once per test session."""
    import rnnsym as rs

    return rs.compile(rs.cells.elman())


@pytest.fixture(autouse=True)
def _no_global_rng(request: pytest.FixtureRequest) -> Iterator[None]:
    """Seed nothing global, and check that no test (or code under test) touched global RNGs.

    Tests draw their randomness from ``np.random.default_rng(seed)`` with explicit seeds, so the
    legacy global NumPy state and the stdlib ``random`` state must be the same after each test.
    (Hypothesis saves and restores both around its examples, so this holds for ``@given`` tests.)
    Skipped when a plugin such as pytest-randomly reseeds the globals itself.
    """
    if request.config.pluginmanager.hasplugin("randomly"):
        yield
        return
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    after = np.random.get_state()
    same_np = np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    same_np = same_np and tuple(np_state[2:]) == tuple(after[2:])
    assert same_np, "global numpy RNG state changed: use np.random.default_rng(seed) instead"
    assert random.getstate() == py_state, "global `random` state changed during the test"
