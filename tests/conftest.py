"""Shared fixtures: a small embedded FIRE-layout set, made once per test session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_fire(tmp_path_factory):
    """Embedded FIRE-layout set at 384 px: 2 S, 1 P and 1 A pairs (exact ground truth)."""
    from fire_reg.embedded import make_embedded_set

    root = tmp_path_factory.mktemp("small_fire")
    make_embedded_set(root, categories={"S": 2, "P": 1, "A": 1}, size=384, seed=3,
                      progress=False)
    return root
