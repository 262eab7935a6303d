"""The ``fire-reg`` command line: register, evaluate, train, export, prepare, data, demo.

Exit status: 0 success, 2 bad input (one line naming the file and the problem), 1 anything else;
``register --batch``: 3 when some pairs failed (:mod:`fire_reg.cli.batch`); stopped by SIGINT or
SIGTERM: 128 + the signal's number, after cleaning up (:mod:`fire_reg.cli.signals`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from fire_reg import __version__
from fire_reg.cli.options import ConfigFlags, Parser, flag_name
from fire_reg.io.images import image_size
from fire_reg.io.errors import InputError
from fire_reg.io.memory import keep_freed_memory
from fire_reg.io.output import exclusive_output
from fire_reg.register.pool import gpu_memory_on_demand, one_blas_thread, one_network_thread
from fire_reg.cli.signals import interruptible


def _parser() -> argparse.ArgumentParser:
    """The whole command line; flags of settings come from their config objects
    (:class:`~fire_reg.cli.options.ConfigFlags`)."""
    parser = Parser(prog="fire-reg",
                    description="Learned registration of retinal fundus photographs.")
    parser.add_argument("--version", action="version", version=f"fire-reg {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to do (fire-reg COMMAND --help for its flags)")

    register = commands.add_parser("register", help="register FIXED and MOVING (or --batch)")
    register.add_argument("fixed", nargs="?", help="fixed (reference) image")
    register.add_argument("moving", nargs="*",
                          help="moving image, brought into the fixed frame; several: a series "
                               "against FIXED, prepared once, one sub-folder of --out per image "
                               "(named by its file stem), run as a batch")
    register.add_argument("--batch", help="CSV (columns fixed,moving[,id]) or FIRE-layout folder")
    register.add_argument("--out", required=True, help="output folder")
    register.add_argument("--resume", action="store_true",
                          help="with --batch or a series: keep the pairs an interrupted run with "
                               "the same settings and model finished, run the rest")
    register.add_argument("--pictures", choices=_pictures(), default="all",
                          help="pictures of each pair beside its transform files: all "
                               "(warped.png and overlay.png), overlay (overlay.png only), none "
                               "(quickest for a cohort: no picture is drawn or decoded)")
    _registrar_options(register)
    _pool_options(register)

    evaluate = commands.add_parser("evaluate", help="FIRE protocol: model vs baselines")
    evaluate.add_argument("--fire", required=True, help="FIRE-layout folder")
    evaluate.add_argument("--out", required=True, help="output folder")
    evaluate.add_argument("--baselines", default="sift,sift-homography,orb,ecc",
                          help="comma-separated: sift, sift-homography, orb, ecc, mi (mutual "
                               "information, needs fire-reg[itk]) ('' for none)")
    evaluate.add_argument("--no-model", action="store_true", help="score the baselines only")
    evaluate.add_argument("--overlays", type=int, default=2,
                          help="overlays of the N best and N worst pairs")
    evaluate.add_argument("--resume", action="store_true",
                          help="keep the pairs an interrupted evaluation already finished")
    _registrar_options(evaluate)
    _pool_options(evaluate)

    train = commands.add_parser("train", help="train the network on prepared shards")
    train.add_argument("--data", required=True, help="shard folder from `fire-reg prepare`")
    train.add_argument("--val-data", help="validation shard folder (default: 10%% of pairs)")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--config", help="JSON file of TrainConfig fields (default: the defaults)")
    _train_flags().add_to(train)
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last completed epoch, with its "
                            "settings, to --epochs")
    train.add_argument("--distribute", action="store_true",
                       help="data-parallel over all local devices (GPUs)")

    export = commands.add_parser("export", help="package a training run's model with its card")
    export.add_argument("--run", required=True, help="run folder of `fire-reg train`")
    export.add_argument("--out", required=True, help="folder for <name>.keras and <name>.json")
    export.add_argument("--validation", help="results.json of `fire-reg evaluate` on held-out pairs")

    prepare = commands.add_parser("prepare", help="sample patch pairs into .npy shards")
    prepare.add_argument("--fire", required=True, help="FIRE-layout folder")
    prepare.add_argument("--out", required=True, help="shard folder")
    _prepare_flags().add_to(prepare)

    data = commands.add_parser("data", help="FIRE-layout data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="WHAT",
                                        help="embedded, fields or verify")
    embedded = data_commands.add_parser("embedded", help="write the embedded FIRE-layout set")
    embedded.add_argument("--out", required=True, help="output folder (FIRE layout)")
    embedded.add_argument("--images", help="folder of single photographs (default: skimage retina)")
    embedded.add_argument("--select", action="append",
                          help="glob of file names in --images to use (repeatable; default: all)")
    embedded.add_argument("--per-image",
                          help="pairs per source image and category, e.g. S2,P2,A1 (default: "
                               "the generator's)")
    embedded.add_argument("--seed", type=int, default=0, help="random seed of the set")
    embedded.add_argument("--size", type=int, help="output width in px (default: source size)")
    embedded.add_argument("--geometry", default="sphere",
                          help="sphere (the curved retina) or affine (the earlier generator)")
    embedded.add_argument("--modality", default="colour",
                          help="draw every moving photograph as this modality (red-free, fa, "
                               "ir; geometry and ground truth unchanged)")
    fields = data_commands.add_parser("fields", help="write a multi-field (montage) set with "
                                                     "exact correspondences")
    fields.add_argument("--out", required=True, help="output folder")
    fields.add_argument("--images", help="folder of single photographs, one set each "
                                         "(default: skimage retina)")
    fields.add_argument("--select", action="append",
                        help="glob of file names in --images to use (repeatable; default: all)")
    fields.add_argument("--fields", type=int, default=7, help="fields per set (5-9)")
    fields.add_argument("--seed", type=int, default=0, help="random seed of the set")
    fields.add_argument("--size", type=int, help="output width in px (default: source size)")
    verify = data_commands.add_parser("verify", help="check a FIRE folder against the manifest")
    verify.add_argument("--fire", required=True, help="FIRE-layout folder")
    verify.add_argument("--layout-only", action="store_true",
                        help="check the FIRE layout only (for sets other than the real FIRE)")

    mosaic = commands.add_parser("mosaic", help="stitch fields of one eye into one montage")
    mosaic.add_argument("fields", nargs="+", metavar="FIELD",
                        help="images, folders of images, or CSV files (first column: path)")
    mosaic.add_argument("--out", required=True, help="output folder")
    mosaic.add_argument("--reference", help="the field whose frame the montage uses "
                                            "(default: the most connected one)")
    _mosaic_flags().add_to(mosaic)
    _registrar_options(mosaic)

    demo = commands.add_parser("demo", help="embedded set -> register -> evaluate -> report")
    demo.add_argument("--out", default="out/demo", help="output folder")
    demo.add_argument("--model", help="a .keras model (default: the shipped weights)")
    return parser


def _pictures() -> tuple[str, ...]:
    from fire_reg.register.result import PICTURES

    return tuple(PICTURES)


def _registrar_flags() -> ConfigFlags:
    from fire_reg.register.registrar import RegistrarConfig

    return ConfigFlags(RegistrarConfig, ("iterations", "refine", "refine_width", "transform",
                                         "modality"))


def _mosaic_flags() -> ConfigFlags:
    from fire_reg.montage.mosaic import MosaicConfig

    return ConfigFlags(MosaicConfig, ("placement", "blend", "min_overlap", "max_width",
                                      "max_residual"))


def _train_flags() -> ConfigFlags:
    from fire_reg.learn.trainer import TrainConfig

    return ConfigFlags(TrainConfig, ("epochs", "steps_per_epoch", "batch_size", "init_from",
                                     "intra_weight"),
                       fallback="or what --config or the resumed run says")


def _prepare_flags() -> ConfigFlags:
    from fire_reg.learn.dataset_creator import PrepareConfig

    return ConfigFlags(PrepareConfig, ("patch_size", "per_pair", "seed", "shard_size", "augment",
                                       "modalities", "modality_share", "fixed_modality_share"))


def _registrar_options(parser) -> None:
    parser.add_argument("--model", help="a .keras model (default: the shipped weights)")
    _registrar_flags().add_to(parser)


def _pool_options(parser) -> None:
    parser.add_argument("--workers", type=int,
                        help="pairs at a time: this process and N-1 worker processes, each "
                             "with the model loaded once (default: every usable core, as many "
                             "as the available memory holds at 1 GB each; 1: one pair after "
                             "the other in this process)")
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="run the pairs on the Dask cluster whose scheduler is at ADDRESS "
                             "(e.g. tcp://10.0.0.5:8786; needs fire-reg[dask])")


def _registrar(args):
    """The Registrar the flags ask for; a bad setting is refused before the model loads."""
    from fire_reg.register.registrar import Registrar

    return Registrar(args.model, _registrar_flags().config(args))


def _check_early(args) -> None:
    """Refuse bad registrar flags and a missing or foreign ``--model`` in milliseconds, before
    anything is read or written and before Keras is imported."""
    if args.command in ("register", "evaluate", "mosaic"):
        _registrar_flags().config(args)
    if args.command == "mosaic":
        _mosaic_flags().config(args)
    workers, dask = getattr(args, "workers", None), getattr(args, "dask", None)
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    if workers is not None and dask is not None:
        raise InputError("--workers", "not with --dask (the cluster's workers run the pairs)")
    if dask is not None:
        from fire_reg.register.pool import check_dask

        check_dask(dask)
    if getattr(args, "model", None) is not None and not getattr(args, "no_model", False):
        from fire_reg.learn.bundle import check_model_file

        check_model_file(args.model)


def cmd_register(args) -> int:
    from fire_reg.register.result import OUTPUTS, write_files

    if args.batch and (args.fixed or args.moving):
        raise InputError(args.batch, "give either FIXED MOVING or --batch, not both")
    if not args.batch and not (args.fixed and args.moving):
        raise InputError("register", "needs FIXED and MOVING images, or --batch LIST")
    if not args.batch and len(args.moving) == 1:
        if args.resume:
            raise InputError("--resume", "continues a batch or a series: give --batch LIST or "
                                         "several MOVING images")
        (moving,) = args.moving
        for path in (args.fixed, moving):  # headers checked before the model loads
            image_size(path)
        registrar = _registrar(args)
        result = registrar.register_files(args.fixed, moving)
        write_files(args.out, result, args.fixed, moving, pictures=args.pictures)
        written = [name for name in OUTPUTS if (Path(args.out) / name).is_file()]
        print(f"{result.status}: {result.reason}; {result.seconds:.2f} s; wrote {args.out}/"
              + ", ".join(written))
        return 0
    from fire_reg.cli.batch import register_batch

    return register_batch(args, _registrar)


def cmd_evaluate(args) -> int:
    from fire_reg.evaluate import baselines
    from fire_reg.data import fire
    from fire_reg.cli.batch import registering_pool
    from fire_reg.evaluate.tester import Tester
    from fire_reg.register.pool import PairPool, default_workers

    problems = fire.verify_layout(args.fire)  # bad input fails before the model loads
    if len(problems) > 1:
        print("\n".join(problems))
    if problems:
        raise InputError(args.fire, problems[0] if len(problems) == 1
                         else f"{len(problems)} problems found (listed above)")
    try:
        chosen = [baselines.baseline(n.strip()) for n in args.baselines.split(",") if n.strip()]
    except ValueError as error:
        raise InputError("--baselines", str(error)) from None
    workers = args.workers or default_workers()
    # the worker processes (no more than the pairs) start now, while the model loads; a Dask
    # cluster's are running
    processes = 1 if args.dask else max(1, min(workers, len(fire.FireDataset(args.fire))))
    started = (PairPool.starting(processes) if args.no_model
               else registering_pool(processes, args.model))
    try:
        methods = ([] if args.no_model else [_registrar(args)]) + [
            m for m in chosen if m.name != "identity"] + [baselines.baseline("identity")]
        tester = Tester(args.fire, args.out, methods, overlays=args.overlays,
                        resume=args.resume, workers=workers, dask=args.dask)
        tester.run(started)
    except BaseException:
        started.close(drop=True)
        raise
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/results.json, report.md, success_curves.png, error_boxplot.png, "
          "trust.png")
    return 0


def cmd_train(args) -> int:
    from fire_reg.config import FieldError
    from fire_reg.learn.trainer import TrainConfig, Trainer

    if args.config:
        base = TrainConfig.load(args.config)
    elif args.resume and (Path(args.out) / "config.json").is_file():
        base = TrainConfig.from_run(args.out)  # the settings the run was started with
    else:
        base = TrainConfig()
    config = _train_flags().config(args, base)
    try:
        trainer = Trainer(args.data, args.out, config, val_dir=args.val_data,
                          distribute=args.distribute)
    except FieldError as error:  # a Trainer argument: --distribute
        raise InputError(flag_name(error.field), error.problem) from None
    if trainer.fit(resume=args.resume) is None:
        how = "early stopping" if trainer.stopped_early else f"of {config.epochs}"
        print(f"{args.out}: the run is finished ({trainer.completed_epochs} epochs, {how}); "
              "nothing to do")
    else:
        print("wrote " + ", ".join(str(path) for path in trainer.outputs()))
    return 0


def cmd_export(args) -> int:
    from fire_reg.learn.trainer import export_model

    path = export_model(args.run, args.out, args.validation)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_prepare(args) -> int:
    from fire_reg.learn.dataset_creator import DatasetCreator

    manifest = DatasetCreator(args.fire, args.out, _prepare_flags().config(args)).run()
    print(f"wrote {manifest['count']} samples in {len(manifest['shards'])} shards and "
          f"{args.out}/manifest.json")
    return 0


def _parse_per_image(text):
    """'S2,P2,A1' -> {'S': 2, 'P': 2, 'A': 1} (checked by make_embedded_set); None stays None."""
    if not text:
        return None
    try:
        return {item.strip()[0].upper(): int(item.strip()[1:]) for item in text.split(",")}
    except (ValueError, IndexError):
        raise InputError("--per-image", f"expected counts like S2,P2,A1, got {text!r}") from None


def cmd_data(args) -> int:
    if args.data_command == "fields":
        from fire_reg.data.fields import make_field_set

        summaries = make_field_set(args.out, images=args.images, fields=args.fields,
                                   seed=args.seed, size=args.size,
                                   select=tuple(args.select or ("*",)))
        print(f"wrote {len(summaries)} multi-field set(s) of {args.fields} fields to {args.out}")
        return 0
    if args.data_command == "embedded":
        from fire_reg.data.embedded import make_embedded_set
        from fire_reg.data.statistics import format_statistics

        summary = make_embedded_set(args.out, images=args.images, seed=args.seed, size=args.size,
                                    select=tuple(args.select or ("*",)),
                                    categories=_parse_per_image(args.per_image),
                                    geometry=args.geometry, modality=args.modality)
        print(f"wrote {len(summary['pairs'])} pairs ({summary['geometry']} geometry) to {args.out}")
        print(format_statistics(summary["statistics"]))
        return 0
    from fire_reg.data import fire

    problems = fire.verify_layout(args.fire) if args.layout_only else fire.verify(args.fire)
    for problem in problems:
        print(problem)
    if problems:
        raise InputError(args.fire, f"{len(problems)} problem(s) found (listed above)")
    print(f"{args.fire}: complete and well-formed")
    return 0


def cmd_mosaic(args) -> int:
    from fire_reg.montage.mosaic import Mosaic, field_paths

    paths = field_paths(args.fields)  # bad input fails before the model loads
    result = Mosaic(_registrar(args), _mosaic_flags().config(args)).build(
        paths, reference=args.reference)
    result.write(args.out)
    placed = sum(p.status == "placed" for p in result.placements)
    for p in result.placements:
        if p.status != "placed":
            print(f"left out {p.path}: {p.reason}")
    print(f"placed {placed} of {len(paths)} fields on a {result.canvas_size[0]} x "
          f"{result.canvas_size[1]} px canvas in {result.seconds['total']:.2f} s; wrote "
          f"{args.out}/mosaic.png, mosaic.json, coverage.png, pairs.json, report.md")
    return 0


def cmd_demo(args) -> int:
    from fire_reg.cli.demo import run_demo

    report = run_demo(args.out, model=args.model)
    print(f"report: {report}")
    return 0


COMMANDS = {"register": cmd_register, "evaluate": cmd_evaluate, "train": cmd_train,
            "export": cmd_export,
            "prepare": cmd_prepare, "data": cmd_data, "demo": cmd_demo, "mosaic": cmd_mosaic}


LIGHT_BACKEND = "numpy"
"""Keras backend of a single-pair ``register`` when none is chosen: it imports in about three
seconds (TensorFlow: about eight) and gives the same matrices (1e-7); inference only."""
BATCH_BACKEND = "jax"
"""Keras backend of the other commands that register (a series, ``--batch``, ``evaluate``,
``mosaic``, ``demo``) when none is chosen: with its compiled functions kept between runs
(:func:`keep_compiled`) it is ready about 3.5 s sooner than TensorFlow (its import), and
holds about 350 MB less per process (README, "Cohorts")."""
COMPILE_CACHE_BYTES = 256 * 2**20
"""Largest size of JAX's compile cache (the least recently used entries go first; one model
takes about 0.2 MB)."""


def _choose_backend(args) -> None:
    """Run a command that registers under :data:`LIGHT_BACKEND` (a single pair) or
    :data:`BATCH_BACKEND` (more pairs, :data:`REGISTERING`) unless the user chose a backend
    (KERAS_BACKEND, or a backend other than Keras' default TensorFlow in ``keras.json``) or
    Keras is already imported; worker processes inherit it. A command that registers on JAX
    keeps what JAX compiles (:func:`keep_compiled`). Training and the other commands keep
    Keras' default."""
    import importlib.util

    if args.command not in REGISTERING or getattr(args, "no_model", False):
        return
    configured = _configured_backend()
    if ("KERAS_BACKEND" not in os.environ and "keras" not in sys.modules
            and configured in (None, "tensorflow") and importlib.util.find_spec("jax")):
        single = args.command == "register" and not args.batch and len(args.moving) <= 1
        os.environ["KERAS_BACKEND"] = LIGHT_BACKEND if single else BATCH_BACKEND
    if (os.environ.get("KERAS_BACKEND") or configured) == "jax":
        keep_compiled()


def _configured_backend() -> str | None:
    """The backend named in Keras' ``keras.json`` (``$KERAS_HOME``, default ``~/.keras``), or
    None. Keras writes that file on its first import, naming TensorFlow: only another name
    is a choice of the user's."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            backend = json.load(file).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


def keep_compiled() -> None:
    """Keep what JAX compiles (the model's weight initialisers as it loads, about 5 s, and
    the network's prediction) in a cache on disk, ``$XDG_CACHE_HOME/fire-reg/jax`` (default
    ``~/.cache/fire-reg/jax``), so that later runs and worker processes load the model in
    under a second; unless JAX_COMPILATION_CACHE_DIR names another. Where that folder cannot
    be made, nothing is kept (each run compiles again). The cache holds at most
    :data:`COMPILE_CACHE_BYTES` and is read and written under a file lock (``filelock``), so
    that a command and its workers compiling at once never read an entry half written."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        folder = os.path.join(home, "fire-reg", "jax")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return
        os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILE_CACHE_BYTES))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


REGISTERING = ("register", "evaluate", "mosaic", "demo")
"""Commands that register pairs: in them GPU memory is taken as needed
(:func:`fire_reg.register.pool.gpu_memory_on_demand`), TensorFlow gets one thread per pool
(:func:`fire_reg.register.pool.one_network_thread`) and numpy's BLAS one thread
(:func:`fire_reg.register.pool.one_blas_thread`)."""


def main(argv=None) -> int:
    """Run one ``fire-reg`` command; returns the exit status. The process keeps and reuses
    the memory it frees (:func:`fire_reg.io.memory.keep_freed_memory`); a command that
    registers takes GPU memory as it needs it, and gives TensorFlow one thread per pool and
    numpy's BLAS one thread."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keep_freed_memory()
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, --version (0), or a parser error (2, one line)
        return int(done.code or 0)
    _choose_backend(args)
    if args.command in REGISTERING:
        gpu_memory_on_demand()
        one_network_thread()
        one_blas_thread()
    try:
        with interruptible():  # SIGINT, SIGTERM -> Interrupted: temporaries and lock removed
            _check_early(args)
            out = getattr(args, "out", None)
            if out is None:
                return COMMANDS[args.command](args)
            with exclusive_output(out):
                return COMMANDS[args.command](args)
    except InputError as error:
        print(f"fire-reg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # exit status 128 + the signal's number, as shells do
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"fire-reg: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except Exception as error:  # anything else is our fault: one line, status 1
        if args.debug:
            raise
        print(f"fire-reg: internal error: {type(error).__name__}: {error} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def console_main() -> int:
    """Entry point of the ``fire-reg`` console script.

    Native libraries (TensorFlow's C++ runtime, libjpeg) write start-up notices straight to
    file descriptor 2, so that no error would ever be one line: unless ``--debug`` is given,
    descriptor 2 goes to /dev/null and Python's ``sys.stderr`` (our messages, progress bars,
    warnings) to the real standard error. The process ends with ``os._exit`` once the command
    has returned (its files are complete), skipping the interpreter's teardown of
    TensorFlow/JAX (0.4-0.7 s).
    """
    if "--debug" not in sys.argv:
        real = os.dup(2)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 2)
        os.close(quiet)
        sys.stderr = os.fdopen(real, "w", buffering=1)
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # every file is written and renamed by now: skip the slow teardown


if __name__ == "__main__":
    sys.exit(console_main())
