"""The demo: embedded FIRE-layout set -> register one pair -> evaluate against baselines.

Runs offline on a fresh clone in a few minutes on 2 CPU cores and writes::

    OUT/fire_embedded/      the embedded FIRE-layout set (scikit-image's retina photograph)
    OUT/register/           transform.json, warped.png, overlay.png for one pair
    OUT/evaluation/         results.json, report.md, success curves, box plot, overlays
"""
from __future__ import annotations

from pathlib import Path

from fire_reg.data.embedded import make_embedded_set
from fire_reg.register.registrar import Registrar
from fire_reg.evaluate.tester import Tester


def run_demo(out_dir, model=None, baselines=("sift", "sift-homography", "orb", "ecc")) -> Path:
    """Run the three stages; returns the path of the Markdown report."""
    from fire_reg.evaluate import baselines as classic
    from fire_reg.data.fire import FireDataset
    from fire_reg.register.result import write_files

    out_dir = Path(out_dir)
    fire_dir = out_dir / "fire_embedded"
    print(f"[1/3] embedded FIRE-layout set -> {fire_dir}")
    summary = make_embedded_set(fire_dir)
    registrar = Registrar(model)
    pair = FireDataset(fire_dir)[summary["pairs"][0]["id"]]
    print(f"[2/3] register {pair.id} -> {out_dir / 'register'}")
    result = registrar.register_files(pair.fixed_path, pair.moving_path)
    write_files(out_dir / "register", result, pair.fixed_path, pair.moving_path)
    print(f"      {result.status}: {result.reason} ({result.seconds:.2f} s)")
    print(f"[3/3] evaluate fire-reg vs {', '.join(baselines)} -> {out_dir / 'evaluation'}")
    methods = [registrar] + [classic.baseline(name) for name in (*baselines, "identity")]
    Tester(fire_dir, out_dir / "evaluation", methods).run()
    report = out_dir / "evaluation" / "report.md"
    print(report.read_text())
    return report
