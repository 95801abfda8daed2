"""Error analysis (notebook 05): where and why a fine-tuned model errs, in pictures a pathologist can judge.

Probabilities are the cross-validated ones, and Grad-CAM, embeddings and neighbours use for each image the fold model
(of the run's first seed) whose test fold held its slide (:func:`explain_models`); runs without fold models fall back,
with a printed warning, to the final model, which did see the images."""

from glomlib.review import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, ("inputs", "models", "galleries", "heatmaps", "neighbours", "browser"))
