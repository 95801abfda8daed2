"""Label review for a pathologist (``glomlib review``, notebook 07): suspicious labels ranked with their reasons.

Three reasons: a confident out-of-fold error, cleanlab's confident learning, and a near-duplicate (rotation-invariant,
PCA-whitened encoder embeddings) carrying the other label. Images with more reasons come first, then by
``1 - p(given label)``. Outputs: review.html (self-contained), review.csv (fill ``reviewed_label`` and run
``glomlib data apply-review``), pairs.csv."""

from glomlib.review.labels.browser import record_decision, review_browser, show_review
from glomlib.review.labels.cli import register
from glomlib.review.labels.config import ID_DIGITS, ReviewConfig, load_review_inputs, run_manifest
from glomlib.review.labels.page import (
    REVIEW_COLUMNS,
    review_html,
    review_table,
    run_review,
    thumbnail_png,
    write_review,
)
from glomlib.review.labels.reasons import (
    REASON_TEXT,
    REASONS,
    Review,
    build_encoder,
    build_review,
    confident_errors,
    confident_learning_issues,
    conflicting_pairs,
    dihedral_variants,
    given_label_probability,
    rank_items,
    similarity_matrix,
    tta_embeddings,
)
