"""Whole-slide images and QuPath outlines in, a glomlib dataset out, reviewable predictions back to QuPath."""

from glomlib.slides.annotations import AnnotationError, Annotations, Outline, load_annotations, rasterize
from glomlib.slides.dataset import extract_dataset, read_slides_csv
from glomlib.slides.export import export_predictions
from glomlib.slides.extract import ExtractOptions, plan_crop
from glomlib.slides.read import Slide, SlideError, open_slide, slide_info

__all__ = [
    "AnnotationError",
    "Annotations",
    "ExtractOptions",
    "Outline",
    "Slide",
    "SlideError",
    "export_predictions",
    "extract_dataset",
    "load_annotations",
    "open_slide",
    "plan_crop",
    "rasterize",
    "read_slides_csv",
    "slide_info",
]
