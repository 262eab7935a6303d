"""Reader for FIRE-layout image-pair sets: the real FIRE and the embedded set alike.

Layout (paths relative to the set's root folder)::

    Images/<ID>_1.jpg                        fixed (reference) image
    Images/<ID>_2.jpg                        moving (test) image
    Ground Truth/control_points_<ID>_1_2.txt one "x_1 y_1 x_2 y_2" line per point
    Masks/mask.png                           optional field of view (nonzero inside)

``<ID>`` starts with the category letter: S (overlap > 75%, no anatomical change),
P (overlap < 75%) or A (overlap > 75%, anatomical change). Images may also be .png, .tif, ...
(any suffix in ``IMAGE_SUFFIXES``). Control points are pixel coordinates
(x right, y down, centre of the top-left pixel at (0, 0)): (x_1, y_1) in the fixed image,
(x_2, y_2) in the moving image. Matrices map fixed pixels to moving pixels (fire_reg.geometry).

The real FIRE has 134 pairs of 2912x2912 images; its files are listed in the manifest
``fire_reg/data/fire.json`` (a copy of ``data_manifest/fire.json``). Published deep-learning
evaluations drop pair P37, whose control points are wrong, and score 133 pairs: pass
``exclude=PUBLISHED_EXCLUDE`` to :class:`FireDataset` for that convention.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from fire_reg.imaging.vessels import green
from fire_reg.io.images import IMAGE_SUFFIXES, image_size, read_image
from fire_reg import geometry
from fire_reg.io.errors import InputError

CATEGORIES = ("S", "P", "A")
FIRE_WIDTH = 2912
PUBLISHED_EXCLUDE = ("P37",)
IMAGES, GROUND_TRUTH = "Images", "Ground Truth"
OUTSIDE_MARGIN = 0.10  # control points may lie this share of the image size outside it

_IMAGE_NAME = re.compile(r"([SPA][A-Za-z0-9]*)_([12])(\.[A-Za-z]+)")
_POINTS_NAME = re.compile(r"control_points_([SPA][A-Za-z0-9]*)_1_2\.txt")
_LAYOUT = ("expected Images/<ID>_1.jpg, Images/<ID>_2.jpg and "
           "'Ground Truth/control_points_<ID>_1_2.txt' with <ID> starting with S, P or A")


def read_control_points(path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a FIRE control-point file; returns (fixed (N, 2), moving (N, 2)) float64 pixels.

    Blank lines are skipped; every other line must hold four finite numbers ``x_1 y_1 x_2 y_2``.
    Raises InputError (naming the file, and the line where relevant) on any other content
    or when fewer than 3 points are given.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"not a readable text file ({error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 4:
            raise InputError(path, f"line {number}: expected 4 columns (x_1 y_1 x_2 y_2), "
                                   f"found {len(tokens)}")
        try:
            values = [float(token) for token in tokens]
        except ValueError:
            raise InputError(path, f"line {number}: not a number in {line.strip()!r}") from None
        if not np.all(np.isfinite(values)):
            raise InputError(path, f"line {number}: non-finite value in {line.strip()!r}")
        rows.append(values)
    if len(rows) < 3:
        raise InputError(path, f"{len(rows)} control points; at least 3 are needed")
    points = np.array(rows, dtype=np.float64)
    return points[:, :2], points[:, 2:]


@dataclass
class FirePair:
    """One FIRE pair; nothing is read from disk until asked for."""

    id: str
    category: str
    fixed_path: Path
    moving_path: Path
    points_path: Path
    _ground_truth: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def path(self, which: str) -> Path:
        """Path of the 'fixed' or 'moving' image."""
        if which not in ("fixed", "moving"):
            raise ValueError(f"which must be 'fixed' or 'moving', got {which!r}")
        return self.fixed_path if which == "fixed" else self.moving_path

    def control_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(fixed (N, 2), moving (N, 2)) control points, float64 pixels; see read_control_points."""
        return read_control_points(self.points_path)

    def image(self, which: str, reduce: int = 1) -> np.ndarray:
        """The image as BGR uint8 (H, W, 3), decoded at 1/``reduce`` size (1, 2, 4 or 8)."""
        return read_image(self.path(which), reduce)

    def green(self, which: str, reduce: int = 1) -> np.ndarray:
        """Green channel (H, W) uint8 of the image, decoded at 1/``reduce`` size."""
        return green(self.image(which, reduce))

    def size(self, which: str) -> tuple[int, int]:
        """(W, H) in pixels of the image, read from the file header."""
        return image_size(self.path(which))

    def scale_to_fire(self) -> float:
        """Factor from this pair's fixed-image pixels to FIRE-equivalent pixels (2912 / width)."""
        return FIRE_WIDTH / self.size("fixed")[0]

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares affine of the control points (cached).

        Returns (M 2x3 float64 mapping fixed pixels to moving pixels, residual of each point
        in moving-image pixels).
        """
        if self._ground_truth is None:
            fixed, moving = self.control_points()
            try:
                self._ground_truth = geometry.fit_affine(fixed, moving)
            except ValueError as error:
                raise InputError(self.points_path, str(error)) from None
        return self._ground_truth

    def check(self) -> None:
        """Raise InputError if the two images differ in size, either is unreadable (header
        check), or a control point lies more than 10% of the image size outside its image."""
        fixed_size, moving_size = self.size("fixed"), self.size("moving")
        if fixed_size != moving_size:
            raise InputError(self.moving_path, f"size {moving_size[0]}x{moving_size[1]} differs "
                                               f"from the fixed image's "
                                               f"{fixed_size[0]}x{fixed_size[1]}")
        size = np.array(fixed_size, dtype=np.float64)
        low, high = -0.5 - OUTSIDE_MARGIN * size, size - 0.5 + OUTSIDE_MARGIN * size
        for points, label in zip(self.control_points(), ("x_1 y_1", "x_2 y_2")):
            outside = np.flatnonzero(np.any((points < low) | (points > high), axis=1))
            if outside.size:
                raise InputError(self.points_path,
                                 f"point {outside[0] + 1} ({label}) lies far outside the "
                                 f"{fixed_size[0]}x{fixed_size[1]} image")


def _sort_key(pair_id: str):
    """Category order S, P, A, then the ID with its numbers compared as numbers."""
    parts = re.split(r"(\d+)", pair_id[1:])
    return CATEGORIES.index(pair_id[0]), [int(part) if part.isdigit() else part for part in parts]


def _scan(root: Path) -> dict[str, dict[str, list[Path]]]:
    """Files found for each pair ID: {'1': [images], '2': [images], 'points': [files]}."""
    found: dict[str, dict[str, list[Path]]] = {}

    def entry(pair_id):
        return found.setdefault(pair_id, {"1": [], "2": [], "points": []})

    if (root / IMAGES).is_dir():
        for path in sorted((root / IMAGES).iterdir()):
            match = _IMAGE_NAME.fullmatch(path.name)
            if match and match[3].lower() in IMAGE_SUFFIXES:
                entry(match[1])[match[2]].append(path)
    if (root / GROUND_TRUTH).is_dir():
        for path in sorted((root / GROUND_TRUTH).iterdir()):
            match = _POINTS_NAME.fullmatch(path.name)
            if match:
                entry(match[1])["points"].append(path)
    return found


def _pair_from_files(root: Path, pair_id: str, files: dict[str, list[Path]]) -> FirePair:
    """Build a FirePair, or raise InputError naming the file that is missing or ambiguous."""
    for side in ("1", "2"):
        if len(files[side]) > 1:
            names = ", ".join(path.name for path in files[side])
            raise InputError(files[side][0], f"more than one image for pair {pair_id}: {names}")
    if not files["1"] and not files["2"]:
        raise InputError(files["points"][0], f"no image {IMAGES}/{pair_id}_1.* or _2.* "
                                             f"for this control-point file")
    for side in ("1", "2"):
        if not files[side]:
            raise InputError(root / IMAGES / f"{pair_id}_{side}.jpg",
                             f"image missing (pair {pair_id} has its other image)")
    if not files["points"]:
        raise InputError(root / GROUND_TRUTH / f"control_points_{pair_id}_1_2.txt",
                         f"control-point file missing for pair {pair_id}")
    return FirePair(pair_id, pair_id[0], files["1"][0], files["2"][0], files["points"][0])


def image_pairs(root) -> tuple[list[tuple[str, Path, Path]], list[InputError]]:
    """(id, fixed, moving) of every pair of a FIRE-layout folder that has both images
    (control points not needed, e.g. for ``fire-reg register --batch``), and one InputError
    per pair with an image missing or ambiguous. InputError when ``root`` is missing or holds
    no images at all."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    pairs, problems = [], []
    for pair_id, files in sorted(_scan(root).items(), key=lambda item: _sort_key(item[0])):
        try:
            pair = _pair_from_files(root, pair_id, {**files, "points": files["points"] or [None]})
        except InputError as error:
            problems.append(error)
            continue
        pairs.append((pair.id, pair.fixed_path, pair.moving_path))
    if not pairs and not problems:
        raise InputError(root, f"no pairs found: expected {IMAGES}/<ID>_1.* and {IMAGES}/<ID>_2.*")
    return pairs, problems


def _pairs(root: Path) -> tuple[list[FirePair], list[InputError]]:
    """All complete pairs in sorted order, and one InputError per incomplete pair."""
    if not root.is_dir():
        raise InputError(root, "folder not found")
    pairs, problems = [], []
    for pair_id, files in sorted(_scan(root).items(), key=lambda item: _sort_key(item[0])):
        try:
            pairs.append(_pair_from_files(root, pair_id, files))
        except InputError as error:
            problems.append(error)
    if not pairs and not problems:
        raise InputError(root, f"no FIRE pairs found: {_LAYOUT}")
    return pairs, problems


class FireDataset:
    """The pairs of a FIRE-layout folder, sorted by category (S, P, A) and then ID.

    ``exclude`` drops pair IDs (IDs not present are ignored); ``exclude=PUBLISHED_EXCLUDE``
    gives the published-evaluation convention (P37 dropped: 133 pairs of the real FIRE).
    The constructor only lists files: raises InputError when ``root`` is missing, holds no
    pairs, or a pair lacks an image or its control-point file. Images are read on demand.
    """

    def __init__(self, root, exclude=()):
        self.root = Path(root)
        pairs, problems = _pairs(self.root)
        if problems:
            raise problems[0]
        self.exclude = tuple(exclude)
        self._pairs = {pair.id: pair for pair in pairs if pair.id not in self.exclude}
        if not self._pairs:
            raise InputError(self.root, f"every pair is excluded ({', '.join(self.exclude)})")

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self):
        return iter(self._pairs.values())

    def __getitem__(self, pair_id: str) -> FirePair:
        try:
            return self._pairs[pair_id]
        except KeyError:
            raise KeyError(f"no pair {pair_id!r} in {self.root}") from None

    def __repr__(self) -> str:
        return f"FireDataset({str(self.root)!r}, {len(self)} pairs, {self.categories})"

    @property
    def ids(self) -> list[str]:
        """Pair IDs in iteration order."""
        return list(self._pairs)

    @property
    def categories(self) -> dict[str, int]:
        """Number of pairs per category, {'S': n, 'P': n, 'A': n}."""
        return {category: len(self.by_category(category)) for category in CATEGORIES}

    def by_category(self, category: str) -> list[FirePair]:
        """The pairs of one category ('S', 'P' or 'A')."""
        return [pair for pair in self if pair.category == category]

    @cached_property
    def width(self) -> int:
        """Width in pixels of the first pair's fixed image (file header)."""
        return next(iter(self)).size("fixed")[0]

    def mask(self) -> np.ndarray | None:
        """Field-of-view mask from Masks/mask.png as a bool (H, W) array, or None if absent."""
        path = self.root / "Masks" / "mask.png"
        return read_image(path).any(axis=2) if path.exists() else None


def load_fire_manifest() -> dict:
    """The FIRE manifest shipped with the package (copy of data_manifest/fire.json)."""
    return json.loads(resources.files("fire_reg.data").joinpath("fire.json").read_text())


def _points_problems(path: Path, count: int | None = None) -> list[str]:
    """Problems of one control-point file; ``count`` is the required number of points."""
    try:
        fixed, _ = read_control_points(path)
    except InputError as error:
        return [str(error)]
    if count is not None and len(fixed) != count:
        return [str(InputError(path, f"{len(fixed)} control points; expected {count}"))]
    return []


def verify(root, manifest: dict | None = None) -> list[str]:
    """Compare a folder with the FIRE manifest (default: the shipped one).

    Reports missing files, pairs not in the manifest, malformed control-point files (or not
    ``points_per_pair`` points), and images that are corrupt or not ``image_size`` (W, H),
    both from the file header only. Returns one line per problem; empty when all is fine.
    """
    root = Path(root)
    manifest = load_fire_manifest() if manifest is None else manifest
    if not root.is_dir():
        return [str(InputError(root, "folder not found"))]
    expected_size = tuple(manifest["image_size"])
    problems = []
    for pair in manifest["pairs"]:
        for key in ("fixed", "moving"):
            path = root / pair[key]
            try:
                size = image_size(path)
            except InputError as error:
                problems.append(str(error))
                continue
            if size != expected_size:
                problems.append(str(InputError(path, f"size {size[0]}x{size[1]}, expected "
                                                     f"{expected_size[0]}x{expected_size[1]}")))
        problems += _points_problems(root / pair["control_points"], manifest.get("points_per_pair"))
    known = {pair["id"] for pair in manifest["pairs"]}
    for pair_id in sorted(set(_scan(root)) - known, key=_sort_key):
        problems.append(str(InputError(root, f"unexpected pair {pair_id} (not in the manifest)")))
    return problems


def verify_layout(root) -> list[str]:
    """Check a FIRE-layout folder without a manifest (e.g. the embedded set).

    Every pair must be complete, its control points parseable and within its images, and
    its two images readable (header) and of equal size. Returns one line per problem.
    """
    try:
        pairs, problems = _pairs(Path(root))
    except InputError as error:
        return [str(error)]
    for pair in pairs:
        try:
            pair.check()
        except InputError as error:
            problems.append(error)
    return [str(problem) for problem in problems]
