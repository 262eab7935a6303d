"""Montage: many fields of one eye placed in one frame and blended into one picture.

Conventions: pixels ``(x, y)``, x right, y down, (0, 0) the centre of the top-left pixel;
every transform of ``mosaic.json`` maps **canvas px (fixed) -> field px (moving)** in the
field's original pixels (the schema of docs/conventions.md); FIRE-equivalent px are px x
2912 / that field's width.

Steps (:meth:`Mosaic.build`):

1. **Which pairs** (not all N^2 at full cost): every field is prepared once for all its
   pairs (``Registrar.prepare``: modality and vessel map); the first field (or
   ``reference``) is registered with every other one; a field with no trusted pair yet is
   then tried against the connected fields until one pair is trusted. With these pairs a
   spanning-tree placement predicts the overlap of every pair not yet registered, and only
   pairs predicted to overlap at least ``min_overlap`` are registered (the loop closures).
2. **Graph**: fields are nodes, pairs with status ``ok`` edges. Fields outside the largest
   connected group are left out with a reason (no trusted pair, or only with other
   left-out fields): a field of another eye or a non-retinal picture is never forced in.
3. **Placement** (:mod:`fire_reg.montage.solve`): the reference (given, else the most
   connected field) is the frame; a minimum spanning tree (cost: the pair's estimated
   error) gives every field's start, then the joint least squares over the correspondences
   of every trusted pair (``placement="joint"``; ``"tree"`` keeps the spanning tree). A pair
   that disagrees with the joint placement by more than ``max_residual`` FIRE px is dropped
   and the placement solved again (when the graph stays connected). Each field's
   transform is stored as a ``local`` transform (quadratic plus B-spline grid) fitted to the
   inverse of its placement, which is not a quadratic (:func:`solve.canvas_transforms`).
4. **Canvas and blending** (:mod:`fire_reg.montage.blend`): the bounding box of all placed
   fields in reference px, scaled down to at most ``max_width`` px; exposure compensation
   and multiband (or feather) blending in colour.
"""
from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fire_reg.config import Config, setting
from fire_reg.data.fire import FIRE_WIDTH
from fire_reg.imaging.vessels import fov_mask
from fire_reg.geometry.transforms import Quadratic
from fire_reg.io.errors import InputError
from fire_reg.io.images import (IMAGE_SUFFIXES, decode_reduction, image_size, read_for_width,
                                write_image)
from fire_reg.io.output import atomic_folder, write_json, write_text
from fire_reg.montage import blend as blending
from fire_reg.montage import solve
from fire_reg.register.result import Registration, failed

OUTPUTS = ("mosaic.png", "coverage.png", "pairs.json", "report.md", "mosaic.json")
"""Every file ``Mosaic`` writes; ``mosaic.json``, moved in last, marks a complete set."""


@dataclass(frozen=True)
class MosaicConfig(Config):
    """Settings of a :class:`Mosaic`, checked on construction (FieldError naming the field)."""

    placement: str = setting("joint", choices=lambda: ("joint", "tree"),
                          help="placement: joint least squares over every trusted pair "
                               "(joint) or the spanning tree alone (tree)")
    blend: str = setting("multiband", choices=lambda: blending.BLENDS,
                         help="multiband or feather blending")
    min_overlap: float = setting(0.4, help="register a further pair only when the placement "
                                           "predicts this share of overlap (0-1)")
    max_width: int = setting(4096, help="widest montage picture, px")
    max_residual: float = setting(10.0, help="drop a pair that disagrees with the joint "
                                             "placement by more than this, FIRE px")
    points_per_pair: int = 100

    def __post_init__(self):
        self._choice("placement")
        self._choice("blend")
        self._number("min_overlap", low=0, high=1)
        self._integer("max_width", low=64)
        self._number("max_residual", above=0)
        self._integer("points_per_pair", low=12)


@dataclass
class Field:
    """One input photograph: original size, the image decoded for registration, its scale
    (decoded px per original px) and field of view; ``domain``: (N, 2) original px on a grid
    inside the field of view and on its outline."""

    path: Path
    size: tuple[int, int]
    image: np.ndarray
    scale: tuple[float, float]
    fov: np.ndarray
    domain: np.ndarray
    outline: np.ndarray

    @classmethod
    def read(cls, path, width) -> "Field":
        size = image_size(path)
        image, scale = read_for_width(path, width)
        fov = fov_mask(image)
        if fov.mean() < 0.05:
            fov = np.ones(fov.shape, bool)  # no dark surround: the whole picture
        step = max(2, image.shape[1] // 24)
        ys, xs = np.nonzero(fov[::step, ::step])
        grid = np.stack([xs, ys], axis=1) * step
        contours, _ = cv2.findContours(fov.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=len).reshape(-1, 2)
        to_original = 1.0 / np.asarray(scale)
        return cls(Path(path), size, image, scale, fov,
                   np.vstack([grid, outline[::max(1, len(outline) // 64)]]) * to_original,
                   outline * to_original)

    def inside(self, points) -> np.ndarray:
        """Whether (N, 2) original px lie in the field of view."""
        pixels = np.rint(np.asarray(points) * np.asarray(self.scale)).astype(int)
        height, width = self.fov.shape
        ok = ((pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0)
              & (pixels[:, 1] < height))
        result = np.zeros(len(pixels), bool)
        result[ok] = self.fov[pixels[ok, 1], pixels[ok, 0]]
        return result

    def at_width(self, width: int) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
        """(BGR image, its scale, its field of view) decoded as for ``width`` px
        (:func:`read_for_width`); the image already decoded when that is the same one (the
        same decode reduction)."""
        if decode_reduction(self.size[0], width) == round(self.size[0] / self.image.shape[1]):
            return self.image, self.scale, self.fov
        image, scale = read_for_width(self.path, width)
        fov = fov_mask(image) if self.fov.mean() < 1.0 else np.ones(image.shape[:2], bool)
        return image, scale, fov

    @property
    def fire_factor(self) -> float:
        """FIRE-equivalent px per px of this field."""
        return FIRE_WIDTH / self.size[0]


@dataclass
class Placement:
    """Where one field ended: status "placed" or "left out", the reason, and (placed) its
    canvas px -> field px transform, its pairs' residuals in the montage and an estimate of
    its error (FIRE px)."""

    path: Path
    status: str
    reason: str
    transform: object = None
    residual_fire_px: float | None = None
    estimated_error_fire_px: float | None = None

    def to_json(self) -> dict:
        return {"path": str(self.path), "status": self.status, "reason": self.reason,
                "transform": None if self.transform is None else self.transform.to_dict(),
                "residual_fire_px": self.residual_fire_px,
                "estimated_error_fire_px": self.estimated_error_fire_px}


@dataclass
class MosaicResult:
    """A montage: the canvas size (px), canvas px per reference px, the reference field's
    index, every field's placement, the pairs registered (``(a, b) -> Registration``, field a
    fixed), the pairs' residuals in the montage (FIRE px), the picture and its coverage."""

    canvas_size: tuple[int, int]
    canvas_scale: float
    reference: int
    placements: list[Placement]
    registrations: dict
    residuals: dict
    picture: np.ndarray
    coverage: np.ndarray
    seconds: dict = field(default_factory=dict)

    @property
    def transforms(self) -> dict[int, object]:
        """Field index -> canvas px -> field px transform, placed fields only."""
        return {k: p.transform for k, p in enumerate(self.placements) if p.transform is not None}

    def to_json(self) -> dict:
        return {"canvas": list(self.canvas_size), "canvas_scale": self.canvas_scale,
                "reference": str(self.placements[self.reference].path),
                "convention": "x right, y down, (0, 0) = centre of the top-left pixel; each "
                              "transform maps canvas px (fixed) -> that field's original px "
                              "(moving); canvas px = canvas_scale x (reference px - offset)",
                "images": [p.to_json() for p in self.placements],
                "pairs": [{"fixed": str(self.placements[a].path),
                           "moving": str(self.placements[b].path), "status": r.status,
                           "estimated_error_px": r.estimated_error_px,
                           "residual_fire_px": self.residuals.get((a, b))}
                          for (a, b), r in self.registrations.items()],
                "seconds": self.seconds}

    def write(self, out_dir) -> None:
        """``mosaic.png``, ``coverage.png``, ``pairs.json`` (every pair registration in the
        transform.json schema), ``report.md`` and ``mosaic.json`` (last), as one set."""
        with atomic_folder(out_dir, owned=OUTPUTS, last="mosaic.json") as folder:
            write_image(folder / "mosaic.png", self.picture)
            write_image(folder / "coverage.png", self.coverage)
            write_json(folder / "pairs.json", [
                {**r.to_json(), "fixed": str(self.placements[a].path),
                 "moving": str(self.placements[b].path)}
                for (a, b), r in self.registrations.items()])
            write_text(folder / "report.md", self.report())
            write_json(folder / "mosaic.json", self.to_json())

    def report(self) -> str:
        """Markdown: each field's placement, residual and estimated error; each pair."""
        names = [p.path.name for p in self.placements]
        lines = [f"# Montage of {len(names)} fields", "",
                 f"Reference: {names[self.reference]}; canvas {self.canvas_size[0]} x "
                 f"{self.canvas_size[1]} px ({self.canvas_scale:.3f} canvas px per reference "
                 f"px); {len(self.registrations)} of {len(names) * (len(names) - 1) // 2} "
                 f"pairs registered; " + ", ".join(f"{k} {v:.2f} s"
                                                   for k, v in self.seconds.items()), "",
                 "| field | status | residual (FIRE px) | estimated error (FIRE px) | reason |",
                 "|---|---|---|---|---|"]
        for name, p in zip(names, self.placements):
            lines.append(f"| {name} | {p.status} | {_fmt(p.residual_fire_px)} | "
                         f"{_fmt(p.estimated_error_fire_px)} | {p.reason} |")
        lines += ["", "| fixed | moving | status | pair estimated error (px) | "
                      "residual in the montage (FIRE px) |", "|---|---|---|---|---|"]
        for (a, b), r in self.registrations.items():
            lines.append(f"| {names[a]} | {names[b]} | {r.status} | "
                         f"{_fmt(r.estimated_error_px)} | {_fmt(self.residuals.get((a, b)))} |")
        return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def field_paths(items) -> list[Path]:
    """Image paths from the command line's items: image files, folders (their images,
    sorted) or CSV files (first column; a header row ``path`` is skipped). InputError for a
    missing item, fewer than two images, or the same image twice."""
    paths = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.suffix.lower() == ".csv" and item.is_file():
            with item.open(newline="") as handle:
                rows = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
            paths += [item.parent / row for row in rows if row.lower() != "path"]
        elif item.is_file():
            paths.append(item)
        else:
            raise InputError(item, "not found")
    if len({p.resolve() for p in paths}) != len(paths):
        raise InputError(paths[0].parent, "the same image is given twice")
    if len(paths) < 2:
        raise InputError(items[0] if items else "mosaic", "a montage needs at least two images")
    for path in paths:
        image_size(path)  # header check before anything is registered
    return paths


class Mosaic:
    """Builds montages with a :class:`fire_reg.register.registrar.Registrar` (``registrar``;
    default: one with the shipped weights) and a :class:`MosaicConfig` (keyword arguments
    change its fields)."""

    def __init__(self, registrar=None, config: MosaicConfig | None = None, **changes):
        self.config = dataclasses.replace(config or MosaicConfig(), **changes)
        if registrar is None:
            from fire_reg.register.registrar import Registrar

            registrar = Registrar()
        self.registrar = registrar

    def build(self, paths, reference=None) -> MosaicResult:
        """The montage of the images at ``paths`` (files; see :func:`field_paths` for
        folders and CSVs); ``reference``: one of them (default: the most connected field).
        InputError for unreadable images, an unknown reference, or no two fields that
        overlap with trust."""
        start = time.perf_counter()
        paths = [Path(p) for p in paths]
        if len(paths) < 2:
            raise InputError(paths[0] if paths else "mosaic", "a montage needs at least two images")
        given = None
        if reference is not None:
            matches = [i for i, p in enumerate(paths) if p.resolve() == Path(reference).resolve()]
            if not matches:
                raise InputError(reference, "the reference is not one of the fields")
            given = matches[0]
        fields = [Field.read(p, self.registrar.decode_width) for p in paths]
        seconds = {"read": time.perf_counter() - start}
        graph = _Graph(fields, self.registrar, self.config)
        group = graph.discover(given or 0)
        seconds["register"] = time.perf_counter() - start - seconds["read"]
        if len(group) < 2:
            raise InputError(paths[0].parent, "no two fields overlap with a trusted "
                                              "registration: no montage")
        ref = given if given is not None else max(
            sorted(group), key=lambda k: sum(k in (e.a, e.b) for e in graph.edges))
        solution, edges = graph.place(group, ref)
        seconds["place"] = time.perf_counter() - start - sum(seconds.values())
        result = self._assemble(fields, graph, group, ref, solution, edges)
        seconds["blend"] = time.perf_counter() - start - sum(seconds.values())
        seconds["total"] = time.perf_counter() - start
        result.seconds = {k: round(v, 3) for k, v in seconds.items()}
        return result

    def _assemble(self, fields, graph, group, ref, solution, edges) -> MosaicResult:
        """Canvas, transforms, residuals, placements, picture."""
        corners = np.vstack([solve.apply(solution[k], fields[k].outline) for k in group])
        low, high = corners.min(axis=0), corners.max(axis=0)
        scale = min(1.0, (self.config.max_width - 1) / max(1.0, float(high[0] - low[0])))
        canvas = tuple(int(np.ceil(v * scale)) + 1 for v in high - low)
        transforms = solve.canvas_transforms(solution, [f.domain for f in fields], low, scale)
        residuals = {}
        for edge in edges:
            residuals[(edge.a, edge.b)] = round(float(np.mean(
                solve.edge_residuals(edge, solution))) * fields[ref].fire_factor, 4)
        placements = []
        for k, f in enumerate(fields):
            if k not in solution:
                placements.append(Placement(f.path, "left out", graph.why_left_out(k, group)))
                continue
            own = [residuals[(e.a, e.b)] for e in edges if k in (e.a, e.b)]
            errors = [graph.registrations[(e.a, e.b)].estimated_error_px
                      * fields[e.a].fire_factor for e in edges if k in (e.a, e.b)
                      and graph.registrations[(e.a, e.b)].estimated_error_px is not None]
            residual = float(np.mean(own)) if own else None
            estimate = float(np.hypot(residual or 0.0, np.median(errors) if errors else 0.0))
            reason = "reference" if k == ref else f"{len(own)} trusted pairs"
            placements.append(Placement(f.path, "placed", reason, transforms[k],
                                        None if residual is None else round(residual, 4),
                                        round(estimate, 4)))
        warped = []
        for k in sorted(solution):
            image, image_scale, fov = fields[k].at_width(int(np.ceil(fields[k].size[0] * scale)))
            to_image = np.diag([image_scale[0], image_scale[1], 1.0])[:2]
            transform = transforms[k].composed(to_image, np.eye(3)[:2])
            box = blending.footprint(transform, fields[k].outline * np.asarray(image_scale),
                                     canvas)
            warped.append(blending.warp_field(image, fov, transform, box))
        labels = [f"{k + 1}" + (" (ref)" if k == ref else "") for k in sorted(solution)]
        return MosaicResult(canvas, scale, ref, placements, graph.registrations, residuals,
                            blending.blend(warped, canvas, self.config.blend),
                            blending.coverage_picture(warped, labels, canvas))


class _Graph:
    """The pairs registered so far and the trusted ones (edges) among the fields."""

    def __init__(self, fields: list[Field], registrar, config: MosaicConfig):
        self.fields, self.registrar, self.config = fields, registrar, config
        self.registrations: dict[tuple[int, int], Registration] = {}
        self.edges: list[solve.Edge] = []
        self._prepared: dict[int, object] = {}

    def prepared(self, k: int):
        """Field k made ready once for all its pairs (``Registrar.prepare``: modality and
        vessel map; the same result as registering the image itself)."""
        if k not in self._prepared:
            field = self.fields[k]
            self._prepared[k] = self.registrar.prepare(field.image, mask=field.fov)
        return self._prepared[k]

    def register(self, a: int, b: int) -> bool:
        """Register field b (moving) onto field a (fixed), once; True when trusted."""
        if (a, b) in self.registrations or (b, a) in self.registrations:
            return False
        fa, fb = self.fields[a], self.fields[b]
        try:
            result = self.registrar.register(self.prepared(a), self.prepared(b))
            result = result.rescaled(1 / np.asarray(fa.scale), 1 / np.asarray(fb.scale),
                                     fa.size, fb.size)
        except Exception as error:  # one pair's crash is that pair's failure
            result = failed(f"registration raised {type(error).__name__}: {error}",
                            fa.size, fb.size)
        self.registrations[(a, b)] = result
        if not result.ok:
            return False
        points_a = fa.domain
        points_b = result.transform.fixed_to_moving(points_a)
        keep = np.flatnonzero(fa.inside(points_a) & fb.inside(points_b))
        if len(keep) < 12:
            return False
        keep = keep[np.linspace(0, len(keep) - 1, min(len(keep), self.config.points_per_pair)
                                ).astype(int)]
        error = result.estimated_error_px if result.estimated_error_px is not None else 1.0
        self.edges.append(solve.Edge(a, b, result.transform, points_a[keep], points_b[keep],
                                     float(error) * fa.fire_factor))
        return True

    def group_of(self, node: int) -> set[int]:
        group, frontier = {node}, [node]
        while frontier:
            current = frontier.pop()
            for e in self.edges:
                for x, y in ((e.a, e.b), (e.b, e.a)):
                    if x == current and y not in group:
                        group.add(y)
                        frontier.append(y)
        return group

    def discover(self, first: int) -> set[int]:
        """Register the pairs of step 1 (module docstring); returns the largest group."""
        count = len(self.fields)
        order = [first] + [k for k in range(count) if k != first]
        for hub in order:
            for k in order:
                if k != hub:
                    self.register(hub, k)
            if len(self.group_of(hub)) > 1:
                break
        group = max((self.group_of(k) for k in order), key=len)
        changed = True
        while changed:
            changed = False
            for u in order:
                if u in group:
                    continue
                for v in sorted(group):
                    if self.register(v, u):
                        group = self.group_of(v)
                        changed = True
                        break
        if len(group) > 2:
            self._loop_closures(group, min(group))
        return self.group_of(min(group))

    def _loop_closures(self, group: set[int], anchor: int) -> None:
        """Register the unregistered pairs of the group that the spanning-tree placement
        predicts to overlap at least ``min_overlap``."""
        domains = [f.domain for f in self.fields]
        tree = solve.tree_solution(len(self.fields), self.edges, anchor, domains)
        inverse = {k: Quadratic.from_forward(c, domains[k]) for k, c in tree.items()}
        for a in sorted(group):
            for b in sorted(group):
                if b <= a or (a, b) in self.registrations or (b, a) in self.registrations:
                    continue
                grid = self.fields[a].domain
                in_b = inverse[b].moving_to_fixed(solve.apply(tree[a], grid))
                if self.fields[b].inside(in_b).mean() >= self.config.min_overlap:
                    self.register(a, b)

    def place(self, group: set[int], reference: int):
        """(coefficients per field, the edges used): tree, then joint with a robust pass."""
        domains = [f.domain for f in self.fields]
        edges = [e for e in self.edges if e.a in group and e.b in group]
        tree = solve.tree_solution(len(self.fields), edges, reference, domains)
        if self.config.placement == "tree":
            return tree, edges
        scale = float(self.fields[reference].size[0])
        joint = solve.joint_solution(edges, reference, tree, scale)
        factor = self.fields[reference].fire_factor
        kept = [e for e in edges if np.median(solve.edge_residuals(e, joint)) * factor
                <= self.config.max_residual]
        if len(kept) < len(edges) and len(solve.spanning_tree(len(self.fields), kept,
                                                             reference)) == len(group) - 1:
            tree = solve.tree_solution(len(self.fields), kept, reference, domains)
            joint, edges = solve.joint_solution(kept, reference, tree, scale), kept
        return joint, edges

    def why_left_out(self, k: int, group: set[int]) -> str:
        tried = [(pair, r) for pair, r in self.registrations.items() if k in pair]
        trusted = [pair for pair, r in tried if r.ok]
        if trusted:
            others = sorted({x for pair in trusted for x in pair} - {k})
            return ("overlaps with trust only fields outside the montage: "
                    + ", ".join(self.fields[x].path.name for x in others))
        if not tried:
            return "not registered with any field"
        best = min(tried, key=lambda item: ("ok", "suspect", "failed").index(item[1].status))
        other = self.fields[best[0][0] if best[0][1] == k else best[0][1]].path.name
        return (f"no trusted registration with any of {len(tried)} fields tried (best: "
                f"{best[1].status} with {other}: {best[1].reason})")
