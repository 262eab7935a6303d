"""The shard format: what is written reads back, and bad folders are named in one line."""
import json

import numpy as np
import pytest

from fire_reg.learn import shards
from fire_reg.io.errors import InputError

SIZE = 8


def sample(index: int) -> shards.Sample:
    """A recognisable sample: pixel values and target carry ``index``."""
    image = np.full((SIZE, SIZE), index, np.uint8)
    target = np.array([[1, 0, index / 100], [0, 1, 0]], np.float32)
    info = shards.info_row(**{column: 0.0 for column in shards.INFO_COLUMNS} | {
        "pair_index": index // 4, "magnitude": index / 10})
    return shards.Sample(image, 255 - image, target, info)


@pytest.fixture
def shard_dir(tmp_path):
    """Ten samples in shards of 4, 4 and 2, with their manifest."""
    written = []
    for number, indices in enumerate((range(0, 4), range(4, 8), range(8, 10))):
        name = shards.shard_name(number)
        shards.write_shard(tmp_path, name, [sample(i) for i in indices])
        written.append({"name": name, "count": len(indices)})
    pairs = [{"index": i, "id": f"S0{i + 1}", "category": "SSP"[i]} for i in range(3)]
    manifest = shards.make_manifest("somewhere", {"patch_size": SIZE}, pairs, written)
    shards.write_manifest(tmp_path, manifest)
    return tmp_path


def test_stream_reads_what_was_written(shard_dir):
    stream = shards.ShardStream(shard_dir)
    assert len(stream) == 10 and stream.patch_size == SIZE
    fixed, moving, target = stream.take([9, 0, 5])
    assert fixed.shape == (3, SIZE, SIZE, 1) and fixed.dtype == np.float32
    np.testing.assert_allclose(fixed[:, 0, 0, 0], np.array([9, 0, 5]) / 255.0)
    np.testing.assert_allclose(moving[:, 0, 0, 0], (255 - np.array([9, 0, 5])) / 255.0)
    np.testing.assert_allclose(target[:, 0, 2], [0.09, 0.0, 0.05], atol=1e-7)
    np.testing.assert_allclose(stream.column("magnitude"), np.arange(10) / 10, atol=1e-6)
    np.testing.assert_array_equal(stream.column("pair_index"), np.arange(10) // 4)
    assert shards.shard_complete(shard_dir, shards.shard_name(2), 2)
    assert not shards.shard_complete(shard_dir, shards.shard_name(2), 3)
    assert not list(shard_dir.glob(".*part*"))


def test_summary_counts_pairs_and_categories(shard_dir):
    summary = shards.summary(shards.load_manifest(shard_dir))
    assert summary["samples"] == 10 and summary["pairs"] == 3
    assert summary["categories"] == {"S": 2, "P": 1}
    assert summary["config"] == {"patch_size": SIZE}


def test_info_row_needs_every_column_and_no_other():
    values = {column: 1.0 for column in shards.INFO_COLUMNS}
    assert shards.info_row(**values).shape == (len(shards.INFO_COLUMNS),)
    with pytest.raises(ValueError, match="magnitude"):
        shards.info_row(**{k: v for k, v in values.items() if k != "magnitude"})
    with pytest.raises(ValueError, match="columns"):
        shards.info_row(**values, extra=1.0)


@pytest.mark.parametrize("damage,expected", [
    (lambda d: (d / "manifest.json").unlink(), "fire-reg prepare"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "malformed"),
    (lambda d: (d / "manifest.json").write_text('{"shards": 3}'), "malformed"),
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "manifest_version": 1})),
     "version 1"),
    (lambda d: shards.part_path(d, shards.shard_name(1), "info").unlink(), "shard_00001_info"),
])
def test_bad_folders_are_named(shard_dir, damage, expected):
    damage(shard_dir)
    with pytest.raises(InputError, match=expected) as error:
        shards.ShardStream(shard_dir)
    assert str(shard_dir) in str(error.value)


def test_unreadable_shard_file_is_named(shard_dir):
    shards.part_path(shard_dir, shards.shard_name(0), "target").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="shard_00000_target.npy: not a readable shard"):
        shards.ShardStream(shard_dir)
