"""Refinement: ECC from a nearby start, and the fine stage recovering a curved map."""
import cv2
import numpy as np
import pytest
from skimage import data

from fire_reg.imaging.vessels import VesselMapSettings, fov_mask, resize_to_width
from fire_reg.register.ecc import EccOptions, ecc_on_maps
from fire_reg.register.fine import FineOptions, fine_stage, match_tiles
from fire_reg.register.maps import VesselMaps
from fire_reg import geometry
from fire_reg.geometry import transforms

WIDTH = 512
SETTINGS = VesselMapSettings(work_width=WIDTH)


@pytest.fixture(scope="module")
def retina():
    image, _ = resize_to_width(cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), WIDTH)
    return image


def curved_pair(retina, forward):
    """(fixed, moving, truth): the moving image shows fixed content p at ``truth(p)``, a
    quadratic bend (the moving image is the fixed one sampled through the inverse map)."""
    size = (retina.shape[1], retina.shape[0])
    domain = geometry.grid_points(size, 20)
    truth = transforms.Quadratic.from_forward(forward, domain)
    backward = transforms.Quadratic(truth.backward, truth.forward)  # moving px -> fixed px
    moving = backward.warp(retina, size)
    moving[~fov_mask(retina)] = 0  # the camera aperture stays put
    return retina, moving, truth


# a FIRE-like P bend: shift plus a curvature of a few px at the edges of a 512 px map
BENT = np.array([[9.0, 1.0, 0.01, 4e-5, -2e-5, 2.5e-5],
                 [-6.0, -0.012, 1.0, -2e-5, 3e-5, 3e-5]])


def _error(transform, truth, maps):
    points = maps.common_points(truth)
    return float(np.linalg.norm(transform.fixed_to_moving(points) - truth.fixed_to_moving(points),
                                axis=1).mean())


def test_fine_stage_recovers_a_quadratic_from_its_best_affine(retina):
    fixed, moving, truth = curved_pair(retina, BENT)
    maps = VesselMaps.of(fixed, moving, SETTINGS)
    start = transforms.Affine(truth.best_affine(maps.common_points(truth)))
    outcome = fine_stage(maps, start, "quadratic")
    assert outcome.model == "quadratic" and "quadratic from" in outcome.reason
    assert _error(start, truth, maps) > 0.7  # the best affine cannot follow the bend
    assert _error(outcome.transform, truth, maps) < 0.3
    assert len(outcome.matches) >= 24 and outcome.heldout_residual < 0.5
    assert outcome.transform.inverse_error(maps.common_points(truth)) < 1e-6


def test_fine_stage_falls_back_when_evidence_is_thin(retina):
    """With a quadratic demanding more matches than there are tiles, the stage keeps a simpler
    model and says why; with no vessels at all it returns the start unchanged."""
    fixed, moving, truth = curved_pair(retina, BENT)
    maps = VesselMaps.of(fixed, moving, SETTINGS)
    start = transforms.Affine(truth.best_affine(maps.common_points(truth)))
    greedy = FineOptions(min_inliers={"quadratic": 10_000, "homography": 12, "affine": 6})
    outcome = fine_stage(maps, start, "quadratic", greedy)
    assert outcome.model == "homography" and "no quadratic" in outcome.reason
    blank = np.zeros_like(fixed)
    empty = VesselMaps.of(blank, blank, SETTINGS)
    outcome = fine_stage(empty, start, "quadratic")
    assert outcome.transform is start and outcome.model == "affine"


def test_match_tiles_report_where_content_moved(retina):
    """A pure shift of (3, -2) px: every confident tile match says so, to sub-pixel precision."""
    shift = transforms.Affine([[1, 0, 3.0], [0, 1, -2.0]])
    moving = shift.warp(retina, (retina.shape[1], retina.shape[0]))
    maps = VesselMaps.of(moving, retina, SETTINGS)  # fixed p shows at p + (3, -2)
    matches = match_tiles(maps, transforms.Affine(geometry.identity()), radius=8)
    assert len(matches) > 50
    displacement = np.median(matches.moving - matches.fixed, axis=0)
    np.testing.assert_allclose(displacement, [3.0, -2.0], atol=0.15)
    sparse = match_tiles(maps, transforms.Affine(geometry.identity()), radius=8, step=32)
    assert len(matches) / 5 < len(sparse) < len(matches) / 3  # about every fourth tile
    dense = {tuple(centre): found for centre, found in zip(matches.fixed, matches.moving)}
    for centre, found in zip(sparse.fixed, sparse.moving):  # the same tiles, the same answers
        np.testing.assert_allclose(found, dense[tuple(centre)])


def test_tile_correlation_is_opencv_s_normalised_one(retina):
    """The plain correlation of zero-mean tiles, normalised at every offset at once, is
    OpenCV's TM_CCOEFF_NORMED surface, flat windows (0) included."""
    from fire_reg.register import fine

    maps = VesselMaps.of(retina, retina, SETTINGS)
    warped = np.ascontiguousarray(np.roll(maps.moving, (2, -3), axis=(0, 1)))
    warped[100:160, 100:160] = 0.25  # a flat patch: some windows see no variance
    tile, radius = 32, 6
    ys, xs, templates, energies = fine._vessel_tiles(maps.fixed, tile, 16, radius, 0.04)
    assert len(ys) > 100
    ys, xs = np.append(ys, 110), np.append(xs, 110)  # a window inside the flat patch
    patch = maps.fixed[110:110 + tile, 110:110 + tile]
    templates = np.concatenate([templates, (patch - patch.mean())[None]]).astype(np.float32)
    energies = np.append(energies, np.square(templates[-1], dtype=np.float64).sum())
    corners = np.stack([ys - radius, xs - radius], axis=1)
    products = np.empty((len(ys), 2 * radius + 1, 2 * radius + 1), np.float32)
    window = tile + 2 * radius
    fine._correlate(warped, templates, products,
                    list(zip(range(len(ys)), range(len(ys)), corners.tolist())), window)
    scores = fine._normalised(products, warped, corners, energies, tile)
    expected = np.stack([cv2.matchTemplate(warped[y:y + window, x:x + window],
                                           maps.fixed[y + radius:y + radius + tile,
                                                      x + radius:x + radius + tile],
                                           cv2.TM_CCOEFF_NORMED) for y, x in corners])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert np.all(scores[-1] == 0) and np.all(expected[-1] == 0)
    assert scores.max() > 0.9  # the shifted map matches


def test_ecc_refines_a_nearby_affine_start(retina):
    truth = transforms.Affine(geometry.about_center(
        1.02 * np.array([[np.cos(0.05), -np.sin(0.05)], [np.sin(0.05), np.cos(0.05)]]),
        (255.5, 255.5)))
    truth.matrix[:, 2] += (12.0, -9.0)
    moving = transforms.Affine(geometry.invert(truth.matrix)).warp(retina, (WIDTH, retina.shape[0]))
    maps = VesselMaps.of(retina, moving, SETTINGS)
    start = geometry.compose(truth.matrix, [[1, 0, 6.0], [0, 1, -4.0]])
    outcome = ecc_on_maps(maps, start, EccOptions(levels=2))
    assert outcome.matrix is not None, outcome.reason
    points = maps.common_points(truth)
    assert geometry.mean_point_distance(outcome.matrix, truth.matrix, points) < 0.5
    # stopping at half the width: from 7 px off to within the fine stage's 4 px search
    coarse = ecc_on_maps(maps, start, EccOptions(levels=2, finest_level=1))
    assert coarse.matrix is not None, coarse.reason
    assert geometry.mean_point_distance(coarse.matrix, truth.matrix, points) < 1.5
    assert not np.allclose(coarse.matrix, outcome.matrix)  # the full width was not solved
    noise = np.random.default_rng(0).integers(0, 255, retina.shape, dtype=np.uint8)
    unrelated = VesselMaps.of(retina, noise, SETTINGS)
    assert ecc_on_maps(unrelated, start).matrix is None  # reported, not raised


def test_plausibility_rejects_a_folding_quadratic():
    domain = geometry.grid_points((512, 512), 10)
    folding = transforms.Quadratic.from_forward([[0, 1, 0, -0.004, 0, 0], [0, 0, 1, 0, 0, 0]],
                                                domain)
    assert "quadratic folds over" in folding.plausibility(domain, 512, 0.05)
    gentle = transforms.Quadratic.from_forward(BENT, domain)
    assert gentle.plausibility(domain, 512, 0.05) is None


def test_similarities_side_by_side_equal_one_by_one(retina):
    """The pool's parallel warps give the same scores as serial calls, across cache evictions."""
    fixed, moving, truth = curved_pair(retina, BENT)
    maps = VesselMaps.of(fixed, moving, SETTINGS)
    candidates = [transforms.Affine([[1, 0, dx], [0, 1, -dx / 2]])
                  for dx in np.linspace(-12, 12, 9)] + [truth]
    side_by_side = maps.similarities(candidates)
    fresh = VesselMaps.of(fixed, moving, SETTINGS)
    assert side_by_side == [fresh.similarity(c) for c in candidates]
    assert np.argmax(side_by_side) == len(candidates) - 1  # the true map aligns best


def _similarity_in_child(maps, transform, queue):
    queue.put(maps.similarity(transform) == maps.similarities([transform])[0])


def test_thread_pool_works_in_a_forked_child(retina):
    """A process forked after the pool started (multiprocessing on Linux) gets its own pool."""
    import multiprocessing

    fixed, moving, truth = curved_pair(retina, BENT)
    maps = VesselMaps.of(fixed, moving, SETTINGS)  # the parent's pool is running
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_similarity_in_child, args=(maps, truth, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=1) is True
