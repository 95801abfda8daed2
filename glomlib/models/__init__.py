"""Model layer: backbones, classifier heads, model and encoder files, inference.

Importing the layer registers the bundle format with :mod:`glomlib.models.files`, so every ``load_model`` /
``save_model`` caller accepts a ``bundle.safetensors`` without knowing about bundles.
"""

from glomlib.models import bundle  # noqa: F401  (registers glomlib.models.bundle's file format)
