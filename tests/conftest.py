"""Shared fixtures: a small embedded FIRE-layout set, made once per test session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keras is imported here, on its default backend (or KERAS_BACKEND), so that a command run in
# this process never picks one for the whole session (fire_reg.cli.commands._choose_backend)
import keras  # noqa: E402,F401
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def jax_compile_cache(tmp_path_factory):
    """Commands run by the tests keep JAX's compiled functions here, not in ~/.cache
    (:func:`fire_reg.cli.commands.keep_compiled`); shared by the session's processes."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax")))


@pytest.fixture(scope="session")
def small_fire(tmp_path_factory):
    """Embedded FIRE-layout set at 384 px: 2 S, 1 P and 1 A pairs (exact ground truth)."""
    from fire_reg.data.embedded import make_embedded_set

    root = tmp_path_factory.mktemp("small_fire")
    make_embedded_set(root, categories={"S": 2, "P": 1, "A": 1}, size=384, seed=3,
                      progress=False)
    return root


@pytest.fixture(scope="session")
def shard_dir(small_fire, tmp_path_factory):
    """Training shards of ``small_fire``: 32 px patches, 8 per pair, in shards of 16."""
    from fire_reg.learn.dataset_creator import DatasetCreator, PrepareConfig

    out = tmp_path_factory.mktemp("train_shards")
    DatasetCreator(small_fire, out, PrepareConfig(patch_size=32, per_pair=8, shard_size=16)).run(
        progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """An untrained (identity) fire-reg model at 32 px, saved as .keras."""
    from fire_reg.learn import network

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    network.build_model({"input_size": 32, "encoder_channels": [4, 8, 8, 8],
                         "trunk_units": 16}).save(path)
    return path
