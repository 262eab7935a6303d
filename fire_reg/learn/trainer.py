"""Trainer: fits the affine network on DatasetCreator shards with standard Keras callbacks.

Run folder (``out``)::

    config.json        resolved training + network config, seeds, versions, command
    model.keras        best model by validation loss (ModelCheckpoint; the fire-reg model, also
                       when a training wrapper is fitted)
    last.keras         model after the latest epoch
    log.csv            per-epoch losses and learning rate (CSVLogger)
    curves.png         training curves
    tensorboard/       TensorBoard logs (TensorFlow and JAX backends)
    backup/            model + optimizer state after the last completed epoch
                       (epoch_NNNN.weights.h5, N = epochs done), kept so that ``fit(resume=True)``
                       (``fire-reg train --resume``) continues the run, also to more epochs

Samples stream from memory-mapped shards (fire_reg.learn.shards); each batch gets on-the-fly
augmentation that keeps the target exact (:mod:`fire_reg.learn.augment`). The network's input
size is the shards' patch size (a config naming another is refused). A motion curriculum admits
only samples whose motion magnitude (mean grid displacement, normalised units) is below a cap
that grows linearly over the first ``curriculum_epochs`` epochs. Batch order, curriculum and
augmentation are seeded by (seed, epoch, step), so an epoch is the same whether or not the run
was resumed before it. Backups, log and checkpoints: :mod:`fire_reg.learn.checkpoints`.

Training across modalities: shards prepared with ``--modalities`` show pairs whose photographs
are drawn as different modalities, and store the moving patch in the fixed patch's modality;
``intra_weight`` adds the loss that compares that patch, warped by the prediction, with the
fixed one (like with like). Fine-tuning: ``init_from`` starts from a model's weights (the
shipped ones, or a user's), after checking that it takes the shards' input.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fire_reg.config import Config, FieldError, NetworkConfig, setting
from fire_reg.learn import checkpoints
from fire_reg.learn.augment import AugmentConfig, augment_batch
from fire_reg.learn.curves import save_training_curves
from fire_reg.learn.dataset_creator import PrepareConfig
from fire_reg.learn.settings import ModelSettings
from fire_reg.io.errors import InputError
from fire_reg.io.output import atomic_path, write_json
from fire_reg.learn import shards
from fire_reg.learn.shards import ShardStream

SHIPPED = "shipped"
"""``init_from`` value that names the shipped weights (fire_reg.learn.bundle.default_model_path)."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """Training settings (``config.json`` of a run records them resolved).

    ``epochs`` to train; ``steps_per_epoch`` batches of ``batch_size`` per epoch (None: one
    pass over the training samples); Adam with a cosine decay from ``learning_rate`` to
    ``min_learning_rate`` over all steps; loss = grid loss + ``match_weight`` x matching loss
    + ``ncc_weight`` x masked NCC of the warped network input + ``intra_weight`` x the
    intra-modality loss (:func:`fire_reg.learn.network.intra_modality_loss`: the moving patch
    in the fixed patch's modality, warped by the predicted matrix, against the fixed patch);
    ``validation_fraction`` of the source pairs held out when no validation shards are given.
    ``init_from``: start from the weights of a fire-reg model (a ``.keras`` path, or "shipped"
    for the shipped weights) instead of the identity start: fine-tuning; its input size,
    preprocessing and network must be the run's (else InputError). Curriculum: in epoch
    e < ``curriculum_epochs`` only the smallest ``curriculum_start + (1 - curriculum_start) *
    e / curriculum_epochs`` share of motions is drawn (0 epochs: no curriculum). ``augment`` switches ``augmentation`` on.
    ``early_stopping_patience``: epochs without a better monitored loss before stopping.
    ``seed`` (>= 0) fixes initial weights, split, order and augmentation.
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    epochs: int = setting(30, help="epochs to train (with --resume: the new total)")
    batch_size: int = setting(32, help="samples per batch")
    steps_per_epoch: int | None = setting(
        None, help="batches per epoch (default: one pass over the training samples)")
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    match_weight: float = 0.05
    ncc_weight: float = 0.0
    intra_weight: float = setting(0.0, help="weight of the intra-modality loss: the moving "
                                            "patch in the fixed patch's modality, warped by the "
                                            "prediction, against the fixed patch (masked NCC)")
    init_from: str | None = setting(None, help=f"a fire-reg .keras model (or {SHIPPED!r}: the "
                                               "shipped weights) to start from: fine-tuning "
                                               "(default: a new network)")
    validation_fraction: float = 0.1
    curriculum_epochs: int = 4
    curriculum_start: float = 0.25
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping_patience: int = 10
    seed: int = 0

    def __post_init__(self):
        self._nested("network", NetworkConfig)
        self._integer("epochs", low=1)
        self._integer("batch_size", low=1)
        self._integer("steps_per_epoch", low=1, optional=True)
        self._number("learning_rate", above=0)
        self._number("min_learning_rate", low=0, high=self.learning_rate)
        self._number("match_weight", low=0)
        self._number("ncc_weight", low=0)
        self._number("intra_weight", low=0)
        if self.init_from is not None and (not isinstance(self.init_from, str)
                                           or not self.init_from.strip()):
            raise FieldError("init_from", f"must be a model path or {SHIPPED!r}, got "
                                          f"{self.init_from!r}")
        self._number("validation_fraction", low=0, below=1)
        self._integer("curriculum_epochs", low=0)
        self._number("curriculum_start", above=0, high=1)
        self._flag("augment")
        self._nested("augmentation", AugmentConfig)
        self._integer("early_stopping_patience", low=0)
        self._integer("seed", low=0)

    @classmethod
    def from_run(cls, run_dir) -> "TrainConfig":
        """The config a run folder recorded in its config.json (e.g. to resume it)."""
        path = Path(run_dir) / "config.json"
        try:
            return cls.from_dict(json.loads(path.read_text())["config"])
        except FileNotFoundError:
            raise InputError(path, "not found: is this a `fire-reg train` run folder?") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(path, f"not a fire-reg run record ({type(error).__name__}: "
                                   f"{error})") from None

    @classmethod
    def load(cls, path) -> "TrainConfig":
        """Read a JSON config file; InputError naming the file when it is missing, unreadable,
        or holds an unknown key or a bad value."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError(path, "config file not found") from None
        except OSError as error:
            raise InputError(path, f"cannot read the config file ({error.strerror})") from None
        except ValueError as error:  # JSON, encoding or a FieldError
            raise InputError(path, f"not a valid training config ({error})") from None


def make_batches(stream: ShardStream, indices: np.ndarray, config: TrainConfig, training: bool):
    """A keras.utils.PyDataset over ``indices`` of ``stream`` (curriculum and augmentation
    when ``training``). With ``intra_weight`` > 0 each batch also holds the intra-modality
    data: input ``intra_moving`` (the same-modality moving map and its field of view) and the
    target ``intra`` (the fixed map, unjittered, and its field of view), under the same
    symmetry and swap as the pair (a swapped pair compares the moving photograph's
    same-modality map, now fixed, with the fixed photograph's map, now moving: like with like
    again)."""
    import keras

    from fire_reg.learn import network

    grid = network.feature_grid(_sized_network(config.network, stream))

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.steps = (training_steps(config, len(indices)) if training
                          else max(1, int(np.ceil(len(indices) / config.batch_size))))
            self.order = self._order()

        def _order(self):
            rng = np.random.default_rng([config.seed, self.epoch])
            if not training:
                return indices
            pool = indices
            if config.curriculum_epochs > 0 and self.epoch < config.curriculum_epochs:
                magnitudes = stream.column("magnitude")[indices]
                share = config.curriculum_start + (1 - config.curriculum_start) * (
                    self.epoch / config.curriculum_epochs)
                cap = np.quantile(magnitudes, share)
                pool = indices[magnitudes <= cap]
            return rng.choice(pool, size=self.steps * config.batch_size,
                              replace=len(pool) < self.steps * config.batch_size)

        def __len__(self):
            return self.steps

        def __getitem__(self, step):
            chosen = self.order[step * config.batch_size:(step + 1) * config.batch_size]
            fixed, moving, target = stream.take(chosen)
            extra = None
            if config.intra_weight > 0:
                moving_same, fov = stream.take(chosen, ("moving_same", "fov"))
                extra = (np.concatenate([fixed, fov[..., :1]], axis=-1),
                         np.concatenate([moving_same, fov[..., 1:]], axis=-1))
            if training and config.augment:
                rng = np.random.default_rng([config.seed, self.epoch, step])
                fixed, moving, target, *extra = augment_batch(
                    fixed, moving, target, rng, config.augmentation, extra=extra)
            inputs = {"fixed": fixed, "moving": moving}
            targets = {"matrix": target.astype(np.float32)}
            if extra:
                inputs[network.INTRA_INPUT], targets["intra"] = extra[1], extra[0]
            if config.match_weight > 0:
                targets["matches"] = network.match_targets(target, fixed, moving, grid)
            if config.ncc_weight > 0:
                targets["warped"] = fixed
            return inputs, targets

        def set_epoch(self, epoch: int):
            """Order and curriculum of ``epoch`` (also right after a resume)."""
            self.epoch = epoch
            self.order = self._order()

    return Batches()


def training_steps(config: TrainConfig, count: int) -> int:
    """Steps per training epoch: ``steps_per_epoch`` or one pass over ``count`` samples."""
    return config.steps_per_epoch or max(1, count // config.batch_size)


def split_by_pair(stream: ShardStream, fraction: float, seed: int):
    """Training / validation sample indices, split by source pair (no pair in both)."""
    pairs = stream.column("pair_index").astype(int)
    unique = np.unique(pairs)
    rng = np.random.default_rng(seed)
    held = rng.choice(unique, size=int(round(fraction * len(unique))), replace=False) \
        if fraction > 0 and len(unique) > 1 else np.array([], int)
    is_val = np.isin(pairs, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class Trainer:
    """Fits the network; ``fit`` is what ``fire-reg train`` runs."""

    def __init__(self, data_dir, out_dir, config: TrainConfig | None = None, val_dir=None,
                 distribute: bool = False):
        self.out_dir = Path(out_dir)
        self.stream = ShardStream(data_dir)
        config = config or TrainConfig()
        self.config = dataclasses.replace(config, network=_sized_network(config.network,
                                                                         self.stream))
        self.prepared = _prepare_config(self.stream)  # how the training shards were made
        self.val_stream = ShardStream(val_dir) if val_dir else None
        if self.val_stream and self.val_stream.patch_size != self.stream.patch_size:
            raise InputError(val_dir, "validation shards have another patch size than the "
                                      "training shards")
        val_prepared = _prepare_config(self.val_stream) if self.val_stream else self.prepared
        if val_prepared.preprocessing != self.prepared.preprocessing:
            raise InputError(val_dir, "validation shards were made with other vessel-map "
                                      "settings than the training shards")
        if distribute:
            _check_distributable()
        self.distribute = distribute
        self.initial_weights = self._initial_weights()  # of init_from, checked against the data
        self.completed_epochs = 0  # after fit: epochs backed up in the run folder
        self.stopped_early = False  # after fit: whether early stopping ended the run

    @functools.cached_property
    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) sample indices, computed once."""
        if self.val_stream is not None:
            return np.arange(len(self.stream)), np.arange(len(self.val_stream))
        return split_by_pair(self.stream, self.config.validation_fraction, self.config.seed)

    def _initial_weights(self) -> list | None:
        """The weights of the ``init_from`` model (None without one). InputError naming the
        model file when it is not a fire-reg model or its input size, preprocessing or network
        differ from this run's (the shards' patch size and vessel maps, ``config.network``)."""
        if self.config.init_from is None:
            return None
        from fire_reg.learn import bundle, network

        path = (bundle.default_model_path() if self.config.init_from == SHIPPED
                else Path(self.config.init_from))
        model, settings = bundle.load_model(path)
        size = self.config.network.input_size
        if settings.input_size != size:
            raise InputError(path, f"takes {settings.input_size} px inputs, the shards hold {size} "
                                   f"px patches; prepare shards with --patch-size "
                                   f"{settings.input_size} to fine-tune it")
        wanted = self.prepared.preprocessing.to_dict()
        differ = sorted(key for key, value in settings.preprocessing.to_dict().items()
                        if wanted.get(key) != value)
        if differ:
            raise InputError(path, "its vessel maps are made with other settings than the "
                                   f"shards' ({', '.join(differ)} differ); prepare shards with "
                                   "its preprocessing to fine-tune it")
        built, ours = network.network_config(model).to_dict(), self.config.network.to_dict()
        differ = sorted(key for key in ours if key != "softmax_temperature_init"
                        and built[key] != ours[key])
        if differ:
            pairs = ", ".join(f"{key} {built[key]} vs {ours[key]}" for key in differ)
            raise InputError(path, f"its network differs from the training config's ({pairs}); "
                                   "give the network settings it was built with")
        return model.get_weights()

    def build(self):
        """Build and compile the network (inside the distribution scope when asked), starting
        from the ``init_from`` weights when given. Sets ``self.network`` (the fire-reg model,
        what checkpoints hold) and returns the model to fit: the network itself, or with
        ``intra_weight`` > 0 the network wrapped with its intra-modality output
        (:func:`fire_reg.learn.network.training_model`)."""
        import keras

        from fire_reg.learn import network

        settings = ModelSettings(input_size=self.config.network.input_size,
                                 preprocessing=self.prepared.preprocessing,
                                 training_data=self.training_data())
        with _distribution_scope(self.distribute):
            model = self.network = network.build_model(self.config.network, settings)
            if self.initial_weights is not None:
                model.set_weights(self.initial_weights)
            if self.config.intra_weight > 0:
                model = network.training_model(model)
            schedule = keras.optimizers.schedules.CosineDecay(
                self.config.learning_rate, decay_steps=max(1, self._total_steps()),
                alpha=self.config.min_learning_rate / self.config.learning_rate)
            losses = {"matrix": network.grid_loss}
            weights = {"matrix": 1.0}
            if self.config.match_weight > 0:
                losses["matches"] = network.match_loss
                weights["matches"] = self.config.match_weight
            if self.config.ncc_weight > 0:
                losses["warped"] = network.masked_ncc_loss
                weights["warped"] = self.config.ncc_weight
            if self.config.intra_weight > 0:
                losses["intra"] = network.intra_modality_loss
                weights["intra"] = self.config.intra_weight
            model.compile(optimizer=keras.optimizers.Adam(schedule), loss=losses,
                          loss_weights=weights)
        return model

    def _total_steps(self) -> int:
        return training_steps(self.config, len(self.split[0])) * self.config.epochs

    def fit(self, resume: bool = False, verbose: int | str = "auto", callbacks=()):
        """Train to ``config.epochs``; returns the Keras History of the epochs run, or None
        when ``resume`` finds the run finished (then nothing is done or written).

        After every epoch the model and optimizer state go to ``backup/``. ``resume`` continues
        from the last completed epoch, with the same settings (only ``epochs`` may change; the
        cosine decay then spans the new total), and its weights and log.csv equal an
        uninterrupted run's bit for bit on the same backend and machine. Without ``resume`` a
        run in ``out_dir`` is started over. ``callbacks``: extra Keras callbacks.
        """
        import keras

        keras.utils.set_random_seed(self.config.seed)
        train_indices, val_indices = self.split
        if len(train_indices) == 0:
            raise InputError(self.stream.shard_dir, "no training samples")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        backup = self.out_dir / checkpoints.BACKUP
        if resume:
            self._check_same_run()
            self.completed_epochs = checkpoints.backed_up_epochs(backup)
        else:
            self.completed_epochs = 0
            checkpoints.clear(backup)
        log = self.out_dir / "log.csv"
        rows = checkpoints.truncate_log(log, self.completed_epochs)
        model = self.model = self.build()
        validation = (make_batches(self.val_stream or self.stream, val_indices, self.config,
                                   training=False) if len(val_indices) else None)
        monitor = "val_loss" if validation is not None else "loss"
        logged = [row.get(monitor, np.nan) for row in rows]
        stopping = checkpoints.early_stopping([{monitor: value} for value in logged],
                                              monitor=monitor,
                                              patience=self.config.early_stopping_patience)
        stopping.set_model(model)
        stopping.on_train_begin()
        self.stopped_early = bool(stopping.stopped_epoch)
        if self.stopped_early or self.completed_epochs >= self.config.epochs:
            return None
        if self.completed_epochs:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(checkpoints.backup_path(backup, self.completed_epochs))
        write_json(self.out_dir / "config.json", self.run_record())
        train = make_batches(self.stream, train_indices, self.config, training=True)
        callbacks = [
            keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda epoch, logs: train.set_epoch(epoch)),
            checkpoints.checkpoint(
                self.out_dir / "model.keras", self.network, monitor=monitor,
                save_best_only=True,
                initial_value_threshold=min(filter(np.isfinite, logged), default=None)),
            checkpoints.checkpoint(self.out_dir / "last.keras", self.network),
            keras.callbacks.CSVLogger(str(log), append=bool(rows)),
            stopping,
            keras.callbacks.TerminateOnNaN(),
            *([keras.callbacks.TensorBoard(str(self.out_dir / "tensorboard"))]
              if _installed("tensorboard") and keras.backend.backend() != "torch" else []),
            # last: an epoch counts once all its files are written
            checkpoints.backup_callback(backup),
            *callbacks,
        ]
        # shuffle=False: Keras would shuffle the batches of each epoch with an unseeded order;
        # make_batches already draws a seeded order per epoch
        history = model.fit(train, validation_data=validation, epochs=self.config.epochs,
                            initial_epoch=self.completed_epochs, callbacks=callbacks,
                            verbose=verbose, shuffle=False)
        self.completed_epochs = checkpoints.backed_up_epochs(backup)
        self.stopped_early = bool(stopping.stopped_epoch)
        self.save_curves()
        return history

    def _check_same_run(self) -> None:
        """Resuming needs the settings and data the run was started with (``epochs`` aside)."""
        path = self.out_dir / "config.json"
        if not path.is_file():
            return  # nothing recorded yet: the run starts from epoch 0
        try:
            record = json.loads(path.read_text())
            config, data = dict(record["config"]), record["training_data"]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(path, f"not a fire-reg run record ({type(error).__name__}: "
                                   f"{error}); start the run again without --resume") from None
        current = self.config.to_dict()
        differ = sorted(key for key in config.keys() | current.keys()
                        if key != "epochs" and config.get(key) != current.get(key))
        if data != self.training_data():
            differ.append("training data")
        if differ:
            raise InputError(path, "the run was made with other settings or data "
                                   f"({', '.join(differ)} differ); resume with the same ones or "
                                   "start a new run")

    def outputs(self) -> list[Path]:
        """The files of the run folder that exist (model.keras, last.keras, log.csv, ...)."""
        names = ("model.keras", "last.keras", "log.csv", "curves.png", "config.json")
        return [self.out_dir / name for name in names if (self.out_dir / name).is_file()]

    def save_curves(self) -> None:
        """Draw log.csv as curves.png."""

        log = self.out_dir / "log.csv"
        if not log.exists():
            return
        rows = checkpoints.read_log(log)
        history = {name: [row[name] for row in rows] for name in rows[0]
                   if name.endswith("loss")} if rows else {}
        save_training_curves(self.out_dir / "curves.png", history)

    def run_record(self) -> dict:
        """The resolved config with seeds, versions and the command line."""
        import keras

        versions = {"python": platform.python_version(), "keras": keras.__version__,
                    "backend": keras.backend.backend(), "numpy": np.__version__}
        if _installed("tensorflow"):
            import tensorflow as tf

            versions["tensorflow"] = tf.__version__
        return {"config": self.config.to_dict(), "data": str(self.stream.shard_dir),
                "validation_data": str(self.val_stream.shard_dir) if self.val_stream else None,
                "data_count": len(self.stream), "training_data": self.training_data(),
                "versions": versions, "command": shlex.join(sys.argv)}

    def training_data(self) -> dict:
        """Summaries (fire_reg.learn.shards.summary) of the training shards and of the validation
        shards (None when the validation pairs are split off the training shards)."""
        return {"train": shards.summary(self.stream.manifest),
                "validation": shards.summary(self.val_stream.manifest) if self.val_stream else None}


def _sized_network(network: NetworkConfig, stream: ShardStream) -> NetworkConfig:
    """The network config at the shards' patch size, its one source: ``input_size`` None takes
    it; InputError naming the shards' manifest when the config names another size."""
    if network.input_size is None:
        return dataclasses.replace(network, input_size=stream.patch_size)
    if network.input_size != stream.patch_size:
        raise InputError(stream.shard_dir / shards.MANIFEST_NAME,
                         f"the shards hold {stream.patch_size} px patches (prepare "
                         f"--patch-size), the training config says network.input_size "
                         f"{network.input_size}; leave network.input_size out (it is the "
                         "shards' patch size) or prepare shards of that size")
    return network


def _prepare_config(stream: ShardStream) -> PrepareConfig:
    """The DatasetCreator settings a shard folder was made with (its manifest's config)."""
    try:
        return PrepareConfig.from_dict(stream.manifest["config"])
    except ValueError as error:
        raise InputError(stream.shard_dir / shards.MANIFEST_NAME,
                         f"malformed sampling config ({error})") from None


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def _distribution_scope(distribute: bool):
    """Data parallelism over all local devices: Keras' DataParallel on JAX,
    tf.distribute.MirroredStrategy on TensorFlow (the backends _check_distributable
    admits); a no-op scope when not asked."""
    import contextlib

    import keras

    if not distribute:
        return contextlib.nullcontext()
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy().scope()


def _check_distributable() -> None:
    """Data-parallel training needs the JAX or TensorFlow backend (FieldError otherwise)."""
    import keras

    if keras.backend.backend() not in ("jax", "tensorflow"):
        raise FieldError("distribute", f"is not supported on the {keras.backend.backend()} "
                                       "backend; use jax or tensorflow")


def export_model(run_dir, out_dir, validation_results=None) -> Path:
    """Write a run's best model (without optimizer state) and its JSON card to ``out_dir``.

    The card: :func:`fire_reg.learn.bundle.card` (file, parameters and the settings the model
    carries), the run record (``training``), its log and, from a ``fire-reg evaluate``
    results.json, the validation summary. Returns the model path. InputError when the run
    folder lacks model.keras or config.json or ``validation_results`` is not a results.json.
    """
    from fire_reg.learn import bundle

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    for needed in ("model.keras", "config.json"):
        if not (run_dir / needed).is_file():
            raise InputError(run_dir / needed, "not found: is this a `fire-reg train` run folder?")
    try:
        record = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(run_dir / "config.json", f"not a fire-reg run record ({error})") from None
    validation = _validation_summary(validation_results) if validation_results else None
    model, settings = bundle.load_model(run_dir / "model.keras")
    model_path = out_dir / f"{bundle.MODEL_NAME}.keras"
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    card = {**bundle.card(model_path, model, settings), "training": record,
            "log": checkpoints.read_log(run_dir / "log.csv")}
    if validation is not None:
        card["validation"] = validation
    write_json(model_path.with_suffix(".json"), card)
    return model_path


def _validation_summary(path) -> dict:
    """Dataset, units and summary of a ``fire-reg evaluate`` results.json."""
    try:
        results = json.loads(Path(path).read_text())
        return {"dataset": results["dataset"], "units": results["units"],
                "summary": results["summary"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(path, "not a results.json of `fire-reg evaluate` "
                               f"({type(error).__name__}: {error})") from None
