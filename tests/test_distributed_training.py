"""Training at scale, for real on a CPU: ``fire-reg train --distribute`` under JAX with two
virtual devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), data-parallel
(``keras.distribution.DataParallel``: each device takes half of every batch, the gradients
are averaged), ends with the weights of a single-device run to float tolerance."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
import numpy as np
import jax, keras
from fire_reg.learn.trainer import TrainConfig, Trainer

shards, out = sys.argv[1], sys.argv[2]
config = TrainConfig.from_dict({"network": {"encoder_channels": [4, 8, 8, 8, 8],
                                            "trunk_units": 16},
                                "epochs": 1, "steps_per_epoch": 4, "batch_size": 4})
weights, losses = {}, {}
for name, distribute in (("single", False), ("data-parallel", True)):  # single first: the
    trainer = Trainer(shards, f"{out}/{name}", config, distribute=distribute)  # distribution
    trainer.fit()                                                       # is set globally
    if name == "single":  # the seeded initial weights, as fit() made them
        keras.utils.set_random_seed(config.seed)
        trainer.build()
        weights["start"] = trainer.network.get_weights()
    model = keras.saving.load_model(f"{out}/{name}/model.keras", compile=False)
    weights[name] = model.get_weights()
    losses[name] = [float(row["loss"]) for row in
                    __import__("csv").DictReader(open(f"{out}/{name}/log.csv"))]
mesh = keras.distribution.distribution().device_mesh
print(json.dumps({
    "devices": len(jax.devices()), "mesh": list(mesh.shape),
    "max_difference": max(float(np.abs(a - b).max())
                          for a, b in zip(weights["single"], weights["data-parallel"])),
    "max_change": max(float(np.abs(a - b).max())
                      for a, b in zip(weights["single"], weights["start"])),
    "losses": losses}))
"""


def test_data_parallel_on_two_devices_ends_with_the_single_device_weights(shard_dir,
                                                                          tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(shard_dir), str(tmp_path)],
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["devices"] == 2 and found["mesh"] == [2]  # the batch really was split
    assert len(found["losses"]["single"]) == 1
    assert found["max_change"] > 1e-4, found  # training moved the weights ...
    assert found["max_difference"] < 1e-5, found  # ... the same way (float32 sums reordered)
    assert found["losses"]["single"] == pytest.approx(found["losses"]["data-parallel"],
                                                      rel=1e-5)
