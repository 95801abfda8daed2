"""Label review for a pathologist (``glomlib review``, notebook 07): suspicious labels ranked with their reasons.

Three reasons: a confident out-of-fold error, cleanlab's confident learning, and a near-duplicate (rotation-invariant,
PCA-whitened encoder embeddings) carrying the other label. Images with more reasons come first, then by
``1 - p(given label)``. Outputs: review.html (self-contained), review.csv (fill ``reviewed_label`` and run
``glomlib data apply-review``), pairs.csv."""

from glomlib.review import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, ("config", "reasons", "page", "browser", "cli"))
