"""Data audit (notebook 01): is the patch collection clean, balanced and consistent across centres?

One pass over the images (:func:`scan_images`) feeds every table, flag and figure; every flagged image is one row per
reason in ``<out>/flags.csv`` (:func:`write_outputs`)."""

from glomlib.review.audit.config import FLAG_COLUMNS, AuditConfig, manifest_flags, prepare
from glomlib.review.audit.duplicates import duplicate_groups, find_duplicates, folds_for, hamming_matrix, near_pairs
from glomlib.review.audit.labels import label_changes, show_labels
from glomlib.review.audit.montage import (
    channel_boxplots,
    duplicate_gallery,
    flagged_gallery,
    mask_area_figure,
    montage_by,
    od_histogram_figure,
    quality_histograms,
    sample_rows,
)
from glomlib.review.audit.quality import flag_summary, quality_flags, robust_z
from glomlib.review.audit.scan import (
    CHANNELS,
    OD_BINS,
    ImageScan,
    image_stats,
    laplacian_variance,
    mask_areas,
    optical_density,
    scan_images,
)
from glomlib.review.audit.tables import counts, format_table, od_histograms, stain_summary, summarise, write_outputs
