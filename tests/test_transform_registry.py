"""The transform registry: a toy model defined here, and nowhere else, is fitted, serialised,
used by the fine stage, judged by trust, offered by the CLI and scored as a reference row."""
import cv2
import numpy as np
import pytest
from skimage import data
from skimage import transform as sktransform

from fire_reg import geometry
from fire_reg.geometry import transforms
from fire_reg.imaging.vessels import VesselMapSettings, resize_to_width
from fire_reg.register import trust
from fire_reg.register.fine import FineOptions, fine_stage
from fire_reg.register.maps import VesselMaps

WIDTH = 512


class ToySimilarity(transforms.Transform):
    """A 4-parameter similarity (rotation, one scale, translation), fixed px -> moving px,
    on scikit-image's SimilarityTransform. Its Jacobian is the base class's (finite
    differences); it declares itself flexible so that the plausibility checks run on it."""

    model, parameters, min_points, min_inliers = "toy-similarity", 4, 2, 8
    weighted, flexible = False, True

    def __init__(self, matrix):
        self.matrix = geometry.as_3x3(matrix)[:2]

    @classmethod
    def fit(cls, fixed, moving, weights=None, domain=None):
        if weights is not None:
            raise ValueError("a toy-similarity fit takes no weights")
        return cls(geometry.fit_similarity(fixed, moving)[0])

    @classmethod
    def from_arrays(cls, forward, backward=None):
        return cls(forward)

    def to_skimage(self):
        return sktransform.SimilarityTransform(matrix=geometry.as_3x3(self.matrix))

    def fixed_to_moving(self, points):
        return geometry.apply(self.matrix, points)

    def moving_to_fixed(self, points):
        return geometry.apply(geometry.invert(self.matrix), points)

    def arrays(self):
        return self.matrix.copy(), geometry.invert(self.matrix)

    def composed(self, moving_affine, fixed_affine):
        """In other pixel grids a similarity may become an affine."""
        return transforms.Affine(geometry.compose(moving_affine, self.matrix,
                                                  geometry.invert(fixed_affine)))


@pytest.fixture
def toy():
    transforms.register_model(ToySimilarity)
    yield ToySimilarity
    transforms.unregister_model(ToySimilarity.model)


TRUTH = geometry.compose([[1, 0, 7.0], [0, 1, -5.0]],
                         geometry.about_center(1.015 * np.array(
                             [[np.cos(0.03), -np.sin(0.03)], [np.sin(0.03), np.cos(0.03)]]),
                             (255.5, 255.5)))


@pytest.fixture(scope="module")
def pair():
    """VesselMaps of a pair whose moving image shows fixed content p at TRUTH p."""
    retina, _ = resize_to_width(cv2.cvtColor(data.retina(), cv2.COLOR_RGB2BGR), WIDTH)
    size = (retina.shape[1], retina.shape[0])
    moving = transforms.Affine(TRUTH).inverse.warp(retina, size)
    return VesselMaps.of(retina, moving, VesselMapSettings(work_width=WIDTH))


def test_model_names_list_registered_models_simplest_first(toy):
    assert transforms.model_names() == ("toy-similarity", "affine", "homography", "quadratic",
                                       "local")
    assert transforms.model_class("toy-similarity") is toy


def test_after_unregistering_only_the_built_in_models_remain():
    assert transforms.model_names() == ("affine", "homography", "quadratic", "local")
    with pytest.raises(ValueError, match="unknown transform model 'toy-similarity'"):
        transforms.fit_transform("toy-similarity", np.zeros((4, 2)), np.zeros((4, 2)))


def test_toy_fits_and_round_trips_through_the_schema(toy):
    fixed = np.random.default_rng(1).uniform(0, 500, (12, 2))
    fitted = transforms.fit_transform("toy-similarity", fixed, geometry.apply(TRUTH, fixed))
    assert isinstance(fitted, toy)
    np.testing.assert_allclose(fitted.matrix, TRUTH, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2 point pairs"):
        transforms.fit_transform("toy-similarity", fixed[:1], fixed[:1])
    back = transforms.transform_from_dict(fitted.to_dict())
    assert isinstance(back, toy)
    np.testing.assert_allclose(back(fixed), fitted(fixed))
    assert back.inverse_error(fixed) < 1e-9
    np.testing.assert_allclose(back.to_skimage()(fixed), fitted(fixed), atol=1e-9)


def test_fine_stage_fits_the_toy_and_trust_judges_it(toy, pair):
    start = transforms.Affine(geometry.compose([[1, 0, 2.0], [0, 1, -1.5]], TRUTH))
    outcome = fine_stage(pair, start, "toy-similarity")
    assert outcome.model == "toy-similarity" and isinstance(outcome.transform, toy)
    assert outcome.reason.startswith("toy-similarity from")
    points = pair.common_points(outcome.transform)
    error = np.linalg.norm(outcome.transform(points) - geometry.apply(TRUTH, points), axis=1)
    assert error.mean() < 0.3
    assert outcome.heldout_residual is not None and outcome.heldout_residual < 0.5
    verdict = trust.judge(pair, outcome.transform, pair.fixed_size)
    assert verdict.checks["toy-similarity"] == {"value": "monotonic, no fold-over", "ok": True}
    assert verdict.status == "ok", verdict.reason
    # the toy's own minimum number of inliers, and an override of it
    strict = FineOptions(min_inliers={"toy-similarity": 100_000})
    refused = fine_stage(pair, start, "toy-similarity", strict)
    assert refused.transform is start and "a toy-similarity needs 100000" in refused.reason


def test_trust_flags_a_folding_flexible_model(toy, pair):
    mirrored = toy(geometry.compose(TRUTH, [[-1, 0, 511.0], [0, 1, 0]]))  # det < 0: a fold
    verdict = trust.judge(pair, mirrored, pair.fixed_size)
    assert not verdict.checks["toy-similarity"]["ok"]
    assert "toy-similarity folds over" in verdict.checks["toy-similarity"]["value"]
    assert verdict.status == "failed"


def test_cli_offers_the_toy_and_the_evaluation_scores_it(toy):
    from fire_reg.cli.commands import _parser
    from fire_reg.evaluate.tester import references

    parser = _parser()
    register = next(action for action in parser._subparsers._group_actions[0].choices.values()
                    if any("--transform" in a.option_strings for a in action._actions))
    option = next(a for a in register._actions if "--transform" in a.option_strings)
    assert "toy-similarity" in option.choices and "quadratic" in option.choices
    assert references()["ground-truth toy-similarity"] == "toy-similarity"


def test_registry_refuses_incomplete_reserved_and_duplicate_models():
    class Nameless(ToySimilarity):
        model = ""

    class NoFit(transforms.Affine):
        model, fit = "no-fit", None

    class Reserved(ToySimilarity):
        model = "none"

    class Impostor(ToySimilarity):
        model = "affine"

    with pytest.raises(TypeError, match="model"):
        transforms.register_model(Nameless)
    with pytest.raises(TypeError, match="'fit'"):
        transforms.register_model(NoFit)
    with pytest.raises(ValueError, match="reserved"):
        transforms.register_model(Reserved)
    with pytest.raises(ValueError, match="already registered"):
        transforms.register_model(Impostor)
    with pytest.raises(ValueError, match="no transform model"):
        transforms.unregister_model("toy-similarity")
    assert transforms.model_names() == ("affine", "homography", "quadratic", "local")
