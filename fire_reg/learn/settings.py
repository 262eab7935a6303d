"""What a fire-reg ``.keras`` file carries besides its weights: :class:`ModelSettings`, and the
names every fire-reg model has (model, inputs, outputs, the settings layer).

Keras-free, so that :mod:`fire_reg.learn.network` (which builds the models) and
:mod:`fire_reg.learn.bundle` (which loads and checks them) both read it without importing each
other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fire_reg.config import Config, FieldError
from fire_reg.imaging.vessels import VesselMapSettings

MODEL_NAME = "fire_reg_affine"
SETTINGS_LAYER = "settings"
INPUTS = ("fixed", "moving")
OUTPUTS = ("matrix", "warped", "matches")
LETTERBOXES = {"centre": "each image scaled so that its longer side fills the square input, "
                         "centred, zero padding (fire_reg.geometry.letterbox)"}
MATRICES = {"normalized_fixed_to_moving": "2x3; maps normalised coordinates of the fixed input "
                                          "(u = (2 x + 1) / S - 1, pixel centres) to those of "
                                          "the moving input (fire_reg.geometry)"}


@dataclass(frozen=True)
class ModelSettings(Config):
    """How to apply a model: what a ``.keras`` file of fire-reg carries besides its weights.

    ``input_size``: side in px of the square network input (the Trainer records its shards'
    patch size; :func:`fire_reg.learn.bundle.load_model` checks it against the network).
    ``preprocessing``: the vessel maps both photographs become
    (:func:`fire_reg.imaging.vessels.vessel_map` with these settings, at
    ``preprocessing.work_width`` px) before they are letterboxed. ``letterbox`` and
    ``matrix``: the conventions (keys of LETTERBOXES and MATRICES). ``training_data``: what
    the model was trained on (``Trainer.training_data()``: shard summaries), None when it
    was not trained by fire-reg's Trainer.
    """

    input_size: int = 128
    preprocessing: VesselMapSettings = field(default_factory=VesselMapSettings)
    letterbox: str = "centre"
    matrix: str = "normalized_fixed_to_moving"
    training_data: dict | None = None

    def __post_init__(self):
        self._integer("input_size", low=16)
        self._nested("preprocessing", VesselMapSettings)
        for name, known in (("letterbox", LETTERBOXES), ("matrix", MATRICES)):
            if getattr(self, name) not in known:
                raise FieldError(name, f"must be one of {sorted(known)}, got "
                                       f"{getattr(self, name)!r}")
        if self.training_data is not None and not isinstance(self.training_data, dict):
            raise FieldError("training_data", f"must be an object or null, got "
                                              f"{self.training_data!r}")
