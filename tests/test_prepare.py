"""One reference, many images: what a prepared fixed image keeps (its maps, and what the
pairs derive from its map alone: the network's input, the ECC pyramid, the fine stage's
vessel tiles, the field-of-view grid; its full-size decode for the pictures), made once and
giving every pair exactly the result of the unprepared images."""
import json

import numpy as np
import pytest

from fire_reg.data.fire import FireDataset
from fire_reg.register import fine, maps
from fire_reg.register.maps import VesselMaps
from fire_reg.register.registrar import Registrar
from fire_reg.register.result import write_files

IDS = ["S01", "S02", "P01", "A01"]  # small_fire's pairs: one fixed image against each moving


def _counting(monkeypatch, module, name):
    """Count the calls of ``module.name`` (still called)."""
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_prepared_fixed_image_derives_once_and_gives_every_pair_the_same_result(
        small_fire, tiny_model_path, monkeypatch):
    data = FireDataset(small_fire)
    fixed_path = data["S01"].fixed_path
    tiles = _counting(monkeypatch, fine, "_vessel_tiles")
    for transform in ("local", "none"):
        registrar = Registrar(tiny_model_path, transform=transform)
        prepared = registrar.prepare_file(fixed_path)
        derived = prepared.image_map().derived
        for number, pair_id in enumerate(IDS[:3]):
            moving_path = data[pair_id].moving_path
            plain = registrar.register_files(fixed_path, moving_path)
            before = {key: value for key, value in derived.items()}
            made = len(tiles)
            result = registrar.register_files(prepared, moving_path)
            assert result.transform.to_dict() == plain.transform.to_dict()
            np.testing.assert_array_equal(result.matrix, plain.matrix)
            assert (result.status, result.reason, result.estimated_error_px, result.similarity,
                    result.checks) == (plain.status, plain.reason, plain.estimated_error_px,
                                       plain.similarity, plain.checks)
            names = {key[0] for key in derived}  # tiles: the fine stage's and the verdict's
            assert names == {"network input", "ecc pyramid", "vessel tiles", "fov grid"}
            if number:  # the first pair made them; the others reuse the very same objects
                assert len(tiles) == made
                assert derived.keys() == before.keys()
                assert all(derived[key] is before[key] for key in before)
    fixed_in, fixed_in_fov = derived[("network input", registrar.size)]
    assert fixed_in.shape == (registrar.size,) * 2 and fixed_in_fov.dtype == bool
    assert not fixed_in.flags.writeable and prepared.map.flags.writeable


def test_fixed_derived_is_kept_per_fixed_map_and_read_only():
    rng = np.random.default_rng(0)
    image = rng.random((64, 80)).astype(np.float32)
    fov = np.ones_like(image, bool)
    fixed = maps.ImageMap(image, fov, (1.0, 1.0))
    moving = maps.ImageMap(np.roll(image, 2, axis=1), fov, (1.0, 1.0))
    made = []

    def make():
        made.append(1)
        return image, image * 2, [fov[::2]]

    first, second = VesselMaps.of_maps(fixed, moving, 80), VesselMaps.of_maps(fixed, moving, 80)
    value = first.fixed_derived(("test", 1), make)
    assert second.fixed_derived(("test", 1), make) is value and len(made) == 1
    assert image.flags.writeable and fov.flags.writeable  # the maps themselves: as they were
    assert not value[1].flags.writeable and not value[2][0].flags.writeable
    with pytest.raises(ValueError):
        value[1][0, 0] = 0
    second.fixed_derived(("test", 2), make)  # another key: made again
    unshared = VesselMaps(image, fov, image, fov, (1.0, 1.0), (1.0, 1.0), 80)
    unshared.fixed_derived(("test", 1), make)  # a pair built from arrays: its own cache
    assert len(made) == 3
    np.testing.assert_array_equal(first.common_points(fine.transforms.Affine(np.eye(3)[:2])),
                                  first._fixed_grid(16))


def test_files_written_from_a_prepared_fixed_image_are_the_same(small_fire, tiny_model_path,
                                                                 tmp_path, monkeypatch):
    data = FireDataset(small_fire)
    fixed_path = data["S01"].fixed_path
    registrar = Registrar(tiny_model_path, transform="quadratic")
    prepared = registrar.prepare_file(fixed_path)
    decodes = _counting(monkeypatch, maps, "decode")
    for pair_id in IDS[:2]:
        moving_path = data[pair_id].moving_path
        result = registrar.register_files(prepared, moving_path)
        write_files(tmp_path / f"{pair_id}_path", result, fixed_path, moving_path)
        write_files(tmp_path / f"{pair_id}_prepared", result, prepared, moving_path)
        written = {path.name: path.read_bytes()
                   for path in (tmp_path / f"{pair_id}_path").iterdir()}
        assert {"transform.json", "overlay.png"} <= written.keys()
        for name, content in written.items():
            again = (tmp_path / f"{pair_id}_prepared" / name).read_bytes()
            assert again == content, name
        record = json.loads(written["transform.json"])
        assert record["fixed"] == str(fixed_path)
    assert len(decodes) == 1  # the reference decoded once for both pairs' pictures
    assert not prepared.decoded().pixels.flags.writeable
    from_pixels = registrar.prepare(prepared.image)
    with pytest.raises(ValueError, match="prepared from pixels"):
        write_files(tmp_path / "none", result, from_pixels, moving_path)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("transform", ["local", "affine", "none"])
def test_groundwork_makes_every_tile_grid_the_pair_uses(small_fire, tiny_model_path,
                                                        monkeypatch, transform):
    """The tiles the Registrar makes while the network runs (fine.groundwork,
    trust.groundwork) are the very ones the fine stage and trust then match: none is made
    after the groundwork, and none goes unused."""
    data = FireDataset(small_fire)
    registrar = Registrar(tiny_model_path, transform=transform)
    prepared = registrar.prepare_file(data["S01"].fixed_path)
    derived = prepared.image_map().derived
    maps_of_pair = registrar._pair_maps((prepared, registrar.prepare_file(
        data["S02"].moving_path)), (None, None), (None, None))[0]
    registrar._groundwork(maps_of_pair)
    made = {key for key in derived if key[0] == "vessel tiles"}
    assert len(made) == (1 if transform == "none" else len(registrar.config.fine.radii) + 1)
    used = []
    original = maps.VesselMaps.fixed_derived

    def recorded(self, key, make):
        used.append(key)
        return original(self, key, make)

    monkeypatch.setattr(maps.VesselMaps, "fixed_derived", recorded)
    tiles = _counting(monkeypatch, fine, "_vessel_tiles")
    registrar.register_files(prepared, data["S02"].moving_path)
    assert not tiles  # every grid was there already
    assert {key for key in used if key[0] == "vessel tiles"} == made
