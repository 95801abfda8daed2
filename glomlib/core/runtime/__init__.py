"""The one runtime policy: device, precision, memory format, seeding.

Hardware and plan (:mod:`.hardware`), precision policy (:mod:`.precision`) and its timed
:mod:`.calibration`, model input (:mod:`.tensors`), training-loop seeding and LR factor (:mod:`.loop`)."""

from glomlib.core.runtime.calibration import _CALIBRATION_MEMO, CALIBRATION_FILE, calibrate, calibration_key  # noqa: F401
from glomlib.core.runtime.hardware import Plan, Workload, autocast, cpu_capabilities, cpu_model, resolve_device  # noqa: F401
from glomlib.core.runtime.loop import lr_factor, rng_state, seed_everything, set_rng_state  # noqa: F401
from glomlib.core.runtime.precision import PRECISIONS, choose_precision, plan  # noqa: F401
from glomlib.core.runtime.tensors import denormalize, normalize, to_input  # noqa: F401
