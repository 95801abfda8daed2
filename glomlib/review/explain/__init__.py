"""Error analysis (notebook 05): where and why a fine-tuned model errs, in pictures a pathologist can judge.

Probabilities are the cross-validated ones, and Grad-CAM, embeddings and neighbours use for each image the fold model
(of the run's first seed) whose test fold held its slide (:func:`explain_models`); runs without fold models fall back,
with a printed warning, to the final model, which did see the images."""

from glomlib.review.explain.browser import (
    error_browser,
    filter_errors,
    live_frontend,
    show_error_browser,
    static_gallery,
)
from glomlib.review.explain.galleries import (
    caption,
    confidence_figure,
    error_gallery,
    error_rate_figure,
    load_display_images,
    load_display_masks,
)
from glomlib.review.explain.gradcam import (
    LogitTarget,
    gradcam,
    gradcam_errors,
    gradcam_figure,
    mask_share,
    target_layer,
)
from glomlib.review.explain.inputs import (
    OUTCOMES,
    ExplainConfig,
    attach_masks,
    chosen_fraction,
    class_names,
    error_indices,
    error_rates,
    load_predictions,
    neighbour_table,
    prepare,
    ranked_errors,
    resolve_run,
    write_outputs,
)
from glomlib.review.explain.models import ExplainModels, embeddings, explain_models, head_layer, load_run_model
from glomlib.review.explain.neighbours import (
    embed_2d,
    embedding_figure,
    embeddings_by_model,
    nearest_neighbours,
    neighbour_gallery,
    neighbours_by_model,
    oof_embeddings,
)
