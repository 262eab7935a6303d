"""Exports that are the result: an exact ITK .tfm for affine results, an ITK displacement field
that maps points like the transform for every other model, and Registration.load."""
import json
import sys

import cv2
import numpy as np
import pytest

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.io.errors import InputError
from fire_reg.register import exports
from fire_reg.register.result import Registration, write_files

sitk = pytest.importorskip("SimpleITK")  # in the `test` and `itk` extras

SIZE = (2912, 2912)  # FIRE size: a bend of ~20 px at the corners
FORWARD = np.array([[3.0, 1.01, 0.02, 2e-5, -1e-5, 1.5e-5],
                    [-4.0, -0.015, 0.99, -1e-5, 2e-5, 1e-5]])


def quadratic(size=SIZE):
    scale = size[0] / 600
    return transforms.Quadratic.from_forward(FORWARD, geometry.grid_points((600, 500), 20)
                                             ).rescaled(scale, scale)


def homography():
    return transforms.Homography([[1.01, 0.02, 40.0], [-0.01, 0.99, -30.0], [4e-6, -2e-6, 1.0]])


def local(size=SIZE):
    """A local map (quadratic + smooth field, ~3 px) fitted on a 512 px working image and
    rescaled to ``size``, as `register` returns one."""
    rng = np.random.default_rng(3)
    fixed = rng.uniform(0, 511, (600, 2))
    moving = transforms.Quadratic.from_forward(FORWARD, fixed)(fixed) + 3.0 * np.sin(
        fixed[:, ::-1] / 90.0)
    base = transforms.fit_transform("quadratic", fixed, moving)
    fitted = transforms.model_class("local").from_base(base, fixed, moving, extent=(512, 512))
    return fitted.rescaled(size[0] / 512, size[1] / 512)


def fixed_points(size=SIZE, count=400):
    """Random fixed points over the whole image, its four corners among them."""
    width, height = size
    points = np.random.default_rng(5).uniform(0, 1, (count, 2)) * [width - 1, height - 1]
    return np.vstack([points, [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]]])


def itk_points(transform, points):
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points])


@pytest.mark.parametrize("make", [quadratic, homography, local],
                         ids=["quadratic", "homography", "local"])
def test_displacement_field_maps_points_like_the_transform(make, tmp_path):
    transform = make()
    record = exports.write_exports(tmp_path, transform, SIZE)
    path = tmp_path / exports.FIELD_NAME
    assert exports.FIELD_NAME in record["written"] and exports.TFM_NAME in record["not_written"]
    assert not (tmp_path / exports.TFM_NAME).exists()
    assert path.stat().st_size < 1_000_000  # a coarse grid, not one vector per pixel
    field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    points = fixed_points()
    distance = np.linalg.norm(itk_points(field, points) - transform(points), axis=1)
    assert distance.max() < 0.05
    _, spacing, error = exports.displacement_field(transform, SIZE)
    assert spacing > 1 and f"spacing {spacing} px" in record["written"][exports.FIELD_NAME]
    assert error <= exports.FIELD_TOLERANCE_PX


def test_a_local_map_made_on_a_working_image_exports_on_a_coarse_grid():
    """A local map fitted on a 512 px working image and rescaled to the 1411 px original (as
    `register` returns it) is smooth over the whole image, its edges included: its field
    meets the tolerance on a coarse grid (a clamp inside the image once needed 1 px)."""
    _, spacing, error = exports.displacement_field(local((1411, 1411)), (1411, 1411))
    assert spacing >= 8 and error <= exports.FIELD_TOLERANCE_PX


def test_a_map_no_grid_interpolates_is_written_at_the_finest_spacing_with_its_error(tmp_path):
    """A map with a kink (a displacement clamped at x = 100.5 px) never meets the tolerance:
    it is written at MIN_SPACING, and the record states the error measured, not 0.01."""
    class Kinked(transforms.Affine):
        def fixed_to_moving(self, points):
            points = np.asarray(points, np.float64)
            return points + np.stack([0.05 * np.minimum(points[:, 0], 100.5),
                                      np.zeros(len(points))], axis=1)

    kinked = Kinked(geometry.identity())
    _, spacing, error = exports.displacement_field(kinked, (400, 300))
    assert spacing == exports.MIN_SPACING and error > exports.FIELD_TOLERANCE_PX
    text = exports.write_displacement_field(tmp_path / exports.FIELD_NAME, kinked, (400, 300))
    assert f"spacing {exports.MIN_SPACING} px" in text and f"within {error:.3g} px" in text


def test_affine_results_get_an_exact_tfm_and_no_field(tmp_path):
    affine = transforms.Affine([[1.02, 0.03, 5.0], [-0.02, 0.98, -7.0]])
    record = exports.write_exports(tmp_path, affine, (600, 500))
    assert exports.TFM_NAME in record["written"] and not (tmp_path / exports.FIELD_NAME).exists()
    itk = sitk.ReadTransform(str(tmp_path / exports.TFM_NAME))
    points = fixed_points((600, 500), 50)
    np.testing.assert_allclose(itk_points(itk, points), affine(points), atol=1e-9)
    with pytest.raises(ValueError, match="displacement field"):
        exports.itk_affine_text(quadratic())


def test_without_simpleitk_the_field_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # `import SimpleITK` now fails
    record = exports.write_exports(tmp_path, quadratic((600, 500)), (600, 500))
    assert record["written"] == {}
    assert "SimpleITK is not installed" in record["not_written"][exports.FIELD_NAME]
    assert "fire-reg[itk]" in record["not_written"][exports.FIELD_NAME]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def image_pair(tmp_path):
    ys, xs = np.mgrid[0:200, 0:240]
    image = np.dstack([(xs + ys) % 256, (3 * xs) % 256, (5 * ys) % 256]).astype(np.uint8)
    paths = tmp_path / "fixed.png", tmp_path / "moving.png"
    for path in paths:
        cv2.imwrite(str(path), image)
    return paths


def test_write_files_then_load_gives_the_result_back(image_pair, tmp_path):
    fixed_path, moving_path = image_pair
    transform = quadratic((240, 200))
    result = Registration(transform, "suspect", "a reason", (240, 200), (240, 200), seconds=1.5,
                          estimated_error_px=0.7, overlap=0.9, similarity=0.4,
                          checks={"scale": {"value": 1.0, "ok": True}},
                          stages={"ecc": transforms.Affine([[1, 0, 2.0], [0, 1, -1.0]])})
    out = tmp_path / "out"
    write_files(out, result, fixed_path, moving_path)
    record = json.loads((out / "transform.json").read_text())
    assert exports.FIELD_NAME in record["exports"]["written"]
    assert (out / exports.FIELD_NAME).is_file() and not (out / exports.TFM_NAME).exists()
    loaded = Registration.load(out / "transform.json")
    assert isinstance(loaded.transform, transforms.Quadratic)
    points = fixed_points((240, 200), 30)
    np.testing.assert_allclose(loaded.transform(points), transform(points))
    np.testing.assert_allclose(loaded.transform.inverse(transform(points)), points, atol=1e-6)
    for name in ("status", "reason", "fixed_size", "moving_size", "seconds",
                 "estimated_error_px", "overlap", "similarity", "checks"):
        assert getattr(loaded, name) == getattr(result, name), name
    np.testing.assert_allclose(loaded.matrix, result.matrix)
    np.testing.assert_allclose(loaded.stages["ecc"].matrix, result.stages["ecc"].matrix)
    with pytest.raises(ValueError, match="displacement field"):
        loaded.to_itk()


def test_load_refuses_what_is_not_a_transform_json(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Registration.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json: not a readable JSON file"):
        Registration.load(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"status": "ok", "fixed_size": [2, 2], "moving_size": [2, 2]}))
    with pytest.raises(InputError, match="not a fire-reg transform.json .missing 'transform'"):
        Registration.load(other)
    other.write_text(json.dumps({"transform": {"model": "spline"}, "status": "ok",
                                 "fixed_size": [2, 2], "moving_size": [2, 2]}))
    with pytest.raises(InputError, match="unknown transform model 'spline'"):
        Registration.load(other)


def test_readme_transform_api_snippet_runs(tmp_path, monkeypatch):
    """The README's "Transform API" example, on a quadratic result written by write_files."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in readme.split("```python")[1:]]
    snippet = next(code for code in blocks if "Registration.load(" in code)
    ys, xs = np.mgrid[0:360, 0:480]
    image = ((xs * 3 + ys) % 256).astype(np.uint8)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), image)
    result = Registration(quadratic((480, 360)), "ok", "checks passed", (480, 360), (480, 360))
    write_files(tmp_path / "out" / "pair", result, tmp_path / "a.png", tmp_path / "b.png")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["in_fixed"].shape == (360, 480) and namespace["in_fixed"].any()
    np.testing.assert_array_equal(namespace["same"], namespace["in_fixed"])
