"""The ``local`` model (quadratic + regularised B-spline grid): schema, inverse, Jacobian, no
fold-over on random inputs, and the fine stage's local step on synthetic pairs: a smooth
deformation is recovered where vessels are dense, a grown lesion without deformation stays
quadratic (and the reason says why), trust judges a local result."""
import json

import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.geometry.local import MAX_STRETCH, Local
from fire_reg.imaging.vessels import VesselMapSettings, fov_mask, resize_to_width
from fire_reg.register import trust
from fire_reg.register.fine import FineOptions, fine_stage
from fire_reg.register.maps import VesselMaps
from fire_reg.register.result import Registration

WIDTH = 512
SETTINGS = VesselMapSettings(work_width=WIDTH)
# a FIRE-like bend of a 512 px map (as tests/test_refine.py)
BENT = np.array([[9.0, 1.0, 0.01, 4e-5, -2e-5, 2.5e-5],
                 [-6.0, -0.012, 1.0, -2e-5, 3e-5, 3e-5]])


def _smooth(points, amplitude):
    """A low-frequency displacement (px) of (N, 2) points, largest about ``amplitude``."""
    x, y = np.asarray(points, np.float64).T
    return amplitude * np.stack(
        [np.sin(2 * np.pi * x / 700 + 0.3) * np.cos(2 * np.pi * y / 650),
         np.cos(2 * np.pi * x / 650 + 1) * np.sin(2 * np.pi * y / 700 + 0.5)], axis=1)


def _random_pairs(rng, count=400, size=512.0, amplitude=3.0):
    """Fixed points, and moving points under a quadratic bend plus a smooth deformation."""
    fixed = rng.uniform(0, size, (count, 2))
    bend = transforms.Quadratic.from_forward(BENT, fixed)
    return fixed, bend(fixed) + _smooth(fixed, amplitude)


@pytest.fixture(scope="module")
def retina():
    image, _ = resize_to_width(cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), WIDTH)
    return image


@pytest.fixture(scope="module")
def bend(retina):
    return transforms.Quadratic.from_forward(BENT, geometry.grid_points(retina.shape[1::-1], 20))


def _pair(retina, bend, amplitude=0.0, lesion=None):
    """(fixed, moving, to_fixed): the moving image shows the fixed content p where
    ``to_fixed(q) = p``, ``to_fixed = bend^-1 + a smooth deformation of ``amplitude`` px``;
    ``lesion`` = (centre, fixed radius, moving radius): a dark blot that grew."""
    height, width = retina.shape[:2]

    def to_fixed(points):
        points = np.asarray(points, np.float64).reshape(-1, 2)
        return bend.moving_to_fixed(points) + _smooth(points, amplitude)

    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    maps = to_fixed(np.stack([xs.ravel(), ys.ravel()], axis=1)).astype(np.float32)
    moving = cv2.remap(retina, maps[:, 0].reshape(height, width),
                       maps[:, 1].reshape(height, width), cv2.INTER_LINEAR)
    moving[~fov_mask(retina)] = 0  # the camera aperture stays put
    fixed = retina.copy()
    if lesion:
        centre, small, large = lesion
        cv2.circle(fixed, centre, small, (30, 30, 60), -1, cv2.LINE_AA)
        moved = tuple(int(v) for v in np.rint(bend(np.array([centre]))[0]))
        cv2.circle(moving, moved, large, (30, 30, 60), -1, cv2.LINE_AA)
    return fixed, moving, to_fixed


def _register(fixed, moving, bend, model="local", options=FineOptions()):
    maps = VesselMaps.of(fixed, moving, SETTINGS)
    start = transforms.Affine(bend.best_affine(maps.common_points(bend)))
    return maps, fine_stage(maps, start, model, options)


# ---------------------------------------------------------------------------- the model

def test_local_is_registered_as_the_richest_model_but_has_no_reference_row():
    from fire_reg.evaluate.tester import references
    from fire_reg.register.registrar import RegistrarConfig

    assert transforms.model_names()[-1] == "local"
    assert transforms.model_class("local") is Local and Local.local and Local.flexible
    assert "ground-truth local" not in references()
    assert RegistrarConfig(transform="local").transform == "local"


def test_fit_follows_a_smooth_deformation_and_round_trips_through_the_schema(tmp_path):
    rng = np.random.default_rng(0)
    fixed, moving = _random_pairs(rng)
    fitted = transforms.fit_transform("local", fixed, moving)
    quadratic = transforms.fit_transform("quadratic", fixed, moving)
    test = rng.uniform(20, 492, (500, 2))
    truth = transforms.Quadratic.from_forward(BENT, test)(test) + _smooth(test, 3.0)
    assert np.linalg.norm(fitted(test) - truth, axis=1).mean() < 0.1
    assert np.linalg.norm(quadratic(test) - truth, axis=1).mean() > 1.0
    record = json.loads(json.dumps(fitted.to_dict()))
    assert record["model"] == "local"
    assert set(record["fixed_to_moving"]) == set(record["moving_to_fixed"]) == {"base", "knots",
                                                                                "grid"}
    assert np.shape(record["fixed_to_moving"]["grid"]) == (2, 8, 8)
    back = transforms.transform_from_dict(record)
    assert isinstance(back, Local)
    np.testing.assert_allclose(back(test), fitted(test), atol=1e-9)
    np.testing.assert_allclose(back.moving_to_fixed(fitted(test)), test, atol=1e-6)
    # through a transform.json, as `fire-reg register` writes it
    result = Registration(fitted, "ok", "test", (512, 512), (512, 512))
    (tmp_path / "transform.json").write_text(json.dumps(result.to_json()))
    loaded = Registration.load(tmp_path / "transform.json")
    np.testing.assert_allclose(loaded.transform(test), fitted(test), atol=1e-9)
    with pytest.raises(ValueError, match="bad local transform arrays"):
        transforms.transform_from_dict({**record, "moving_to_fixed": [[1.0] * 6] * 2})


def test_inverse_round_trip_is_exact_and_the_stored_inverse_within_005_px():
    rng = np.random.default_rng(1)
    fixed, moving = _random_pairs(rng, amplitude=4.0)
    domain = geometry.grid_points((512, 512), 40)
    fitted = Local.from_base(transforms.fit_transform("quadratic", fixed, moving), fixed, moving,
                             domain=domain, extent=(512, 512))
    assert fitted.inverse_error(domain) < 1e-6  # Newton from the stored inverse
    stored = fitted.stored_inverse(fitted(domain))
    assert np.linalg.norm(stored - domain, axis=1).max() < 0.05
    # at FIRE's resolution too: the same map seen in 2912 px images
    full = fitted.rescaled(2912 / 512, 2912 / 512)
    big = geometry.grid_points((2912, 2912), 25)
    assert full.inverse_error(big) < 1e-5
    assert np.linalg.norm(full.stored_inverse(full(big)) - big, axis=1).max() < 0.05 * 2912 / 512
    np.testing.assert_allclose(full.inverse(full(big)), big, atol=1e-5)


def test_jacobian_dense_map_and_rescaling_agree_with_the_map():
    rng = np.random.default_rng(2)
    fixed, moving = _random_pairs(rng)
    fitted = Local.fit(fixed, moving, extent=(512, 512))
    points = rng.uniform(0, 511, (300, 2))
    numeric = transforms.Transform.jacobian(fitted, points)  # central differences
    np.testing.assert_allclose(fitted.jacobian(points), numeric, atol=1e-6)
    map_x, map_y = fitted.dense_map((512, 400))
    pixels = np.floor(points[points[:, 1] < 400]).astype(int)
    mapped = fitted(pixels.astype(np.float64))
    np.testing.assert_allclose(map_x[pixels[:, 1], pixels[:, 0]], mapped[:, 0], atol=1e-3)
    np.testing.assert_allclose(map_y[pixels[:, 1], pixels[:, 0]], mapped[:, 1], atol=1e-3)
    scaled = fitted.rescaled((2.0, 1.5), 0.5)  # other px grids of both images
    np.testing.assert_allclose(
        scaled(geometry.apply(geometry.scaling((2.0, 1.5)), points)),
        geometry.apply(geometry.scaling(0.5), fitted(points)), atol=1e-9)
    rotated = fitted.composed(geometry.identity(), geometry.about_center(
        np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]), (256, 256)))
    turn = geometry.about_center(np.array([[np.cos(0.2), -np.sin(0.2)],
                                           [np.sin(0.2), np.cos(0.2)]]), (256, 256))
    np.testing.assert_allclose(rotated(geometry.apply(turn, points)), fitted(points), atol=1e-9)
    assert rotated.inverse_error(geometry.apply(turn, points)) < 1e-6
    xs, ys = np.array([-3.0, 0.0, 7.5, 260.25, 511.0, 530.0]), np.array([2.0, 99.5, 400.0])
    nodes = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    oblong = Local.fit(fixed, moving, extent=(512, 300))  # other knot spacings along x and y
    for model in (fitted, oblong, rotated):  # separable; knots turned against the px axes
        assert model.field.separable() == (model is not rotated)
        np.testing.assert_allclose(model.on_grid(xs, ys).reshape(-1, 2), model(nodes),
                                   rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_no_fold_over_on_random_inputs(seed):
    """Random bases, random matches with wild displacements and outliers: the fitted grid's
    stretch stays bounded and the Jacobian determinant positive everywhere sampled."""
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.7, 1.4)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fixed = rng.uniform(0, 512, (int(rng.integers(30, 600)), 2))
    rigid = fixed @ linear.T + rng.uniform(-50, 50, 2)
    moving = rigid + rng.normal(0, rng.uniform(0.5, 8), fixed.shape)
    wild = rng.random(len(fixed)) < 0.3
    moving[wild] += rng.uniform(-40, 40, (wild.sum(), 2))
    base = transforms.fit_transform("quadratic", fixed, rigid)
    fitted = Local.from_base(base, fixed, moving, rng.uniform(0.5, 1, len(fixed)),
                             smoothing=float(rng.choice([1e-4, 1e-3, 0.01, 1.0])),
                             extent=(512, 512))
    assert fitted.stretch_bound() <= MAX_STRETCH
    points = rng.uniform(-50, 560, (20000, 2))
    assert np.linalg.det(fitted.jacobian(points)).min() > 0
    assert fitted.plausibility(geometry.grid_points((512, 512), 30), 512, 1.0) is None


# ---------------------------------------------------------------------------- fine stage

def test_fine_stage_recovers_a_smooth_deformation_where_vessels_are_dense(retina, bend):
    fixed, moving, to_fixed = _pair(retina, bend, amplitude=3.0)
    maps, outcome = _register(fixed, moving, bend)
    _, quadratic = _register(fixed, moving, bend, "quadratic")
    assert outcome.model == "local" and isinstance(outcome.transform, Local)
    assert "then local from" in outcome.reason and "below the quadratic's" in outcome.reason
    # where vessels are dense: points of the common field of view whose 32 x 32 px
    # neighbourhood has a mean vessel value of at least twice the tile threshold
    points = maps.common_points(outcome.transform, step=8)
    content = cv2.blur(maps.fixed, (32, 32))
    dense = content[points[:, 1].astype(int), points[:, 0].astype(int)] >= 0.08
    assert dense.mean() > 0.3

    def error(transform):
        return np.linalg.norm(to_fixed(transform(points[dense])) - points[dense], axis=1)

    assert error(outcome.transform).mean() < 0.25 and np.percentile(
        error(outcome.transform), 95) < 0.5
    assert error(quadratic.transform).mean() > 0.5  # the quadratic cannot follow it
    assert outcome.heldout_residual < quadratic.heldout_residual
    verdict = trust.judge(maps, outcome.transform, maps.fixed_size)
    assert verdict.status == "ok", verdict.reason
    assert verdict.checks["local"] == {"value": "monotonic, no fold-over", "ok": True}
    assert verdict.estimated_error_px < 1.0


def test_grown_lesion_without_deformation_stays_quadratic(retina, bend):
    fixed, moving, to_fixed = _pair(retina, bend, lesion=((330, 250), 6, 35))
    maps, outcome = _register(fixed, moving, bend)
    _, quadratic = _register(fixed, moving, bend, "quadratic")
    assert outcome.model == "quadratic" and outcome.transform is not None
    assert "no local correction: it does not lower the held-out residual" in outcome.reason
    points = maps.common_points(outcome.transform)
    np.testing.assert_allclose(outcome.transform(points), quadratic.transform(points))
    assert np.linalg.norm(to_fixed(outcome.transform(points)) - points, axis=1).max() < 0.3
    # even a correction forced on (no gain needed) leaves the lesion where it is: its grid
    # follows the vessel tiles, not the blot
    _, forced = _register(fixed, moving, bend, options=FineOptions(local_gain=0.0))
    assert forced.model == "local"
    near = points[np.linalg.norm(points - (330, 250), axis=1) < 60]
    assert np.linalg.norm(to_fixed(forced.transform(near)) - near, axis=1).max() < 0.3


def test_local_step_says_why_it_falls_back(retina, bend):
    fixed, moving, _ = _pair(retina, bend, amplitude=3.0)
    _, thin = _register(fixed, moving, bend, options=FineOptions(min_inliers={"local": 10_000}))
    assert thin.model == "quadratic"
    assert "no local correction" in thin.reason and "a local needs 10000" in thin.reason
    _, flat = _register(fixed, moving, bend, options=FineOptions(
        min_inliers={"quadratic": 10_000}))
    assert flat.model == "homography"
    assert "no local correction: it needs a quadratic first" in flat.reason


def test_registrar_with_transform_local_writes_and_reads_a_local_result(small_fire, tmp_path):
    """End to end on an embedded A pair (exact ground truth, a smooth non-rigid change): the
    shipped model, ``transform="local"``, transform.json written and read back."""
    from fire_reg.data.fire import FireDataset
    from fire_reg.evaluate import metrics
    from fire_reg.register.registrar import Registrar
    from fire_reg.register.result import write_files

    pair = FireDataset(small_fire)["A01"]
    fixed_pts, moving_pts = pair.control_points()
    registrar = Registrar(transform="local")
    result = registrar.register_files(pair.fixed_path, pair.moving_path)
    quadratic = Registrar((registrar.model, registrar.settings), transform="quadratic"
                          ).register_files(pair.fixed_path, pair.moving_path)
    assert "local" in result.reason
    if result.transform.model == "local":  # kept: it must not be worse at the control points
        assert "fine_local" in result.stages
        assert metrics.fire_error(result.transform, fixed_pts, moving_pts) <= \
            metrics.fire_error(quadratic.transform, fixed_pts, moving_pts) + 0.05
    else:
        assert "no local correction" in result.reason
    write_files(tmp_path / "out", result, pair.fixed_path, pair.moving_path)
    loaded = Registration.load(tmp_path / "out" / "transform.json")
    points = geometry.grid_points(pair.size("fixed"), 10)
    np.testing.assert_allclose(loaded.transform(points), result.transform(points), atol=1e-9)
    assert loaded.transform.inverse_error(points[20:-20]) < 1e-4
