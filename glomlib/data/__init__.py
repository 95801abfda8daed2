"""Data layer: manifests, public datasets, the patch cache, slide-grouped splits (no torch)."""
