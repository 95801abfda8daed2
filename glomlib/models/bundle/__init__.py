"""A model bundle: the models one fine-tune run trains, as one file accepted wherever a model file is.

The final models (trained on all labels, seeds apart: ``final_seeds``) and, with ``bundle_members="folds+finals"``,
the fold models of every seed go into ``bundle.safetensors``, which predict, evaluate, calibrate and slides export
accept like a model file.

The file holds every member's tensors (``members.<i>.<name>``) and metadata: the shared model keys (backbone,
image size, labels, threshold, stain option...), ``members`` (name, source, sha256 of its tensors, seed, fold)
and ``combine``: how member outputs become one probability (see :mod:`.ensemble`). ``glomlib finetune`` writes it
next to ``model.safetensors``; a member whose tensors were changed after packing is refused (exit 5).
Optional test-time augmentation (8 flips/90-degree rotations): :class:`TTA`.
"""

# ruff: noqa: F401 (the package re-exports its public names)
from glomlib.models.bundle.ensemble import COMBINES, DEFAULT_COMBINE, TTA, BundleModel, combine_probs
from glomlib.models.bundle.pack import BUNDLE_FILE, BUNDLE_FORMAT, is_bundle, load_bundle, pack_files, save_bundle
