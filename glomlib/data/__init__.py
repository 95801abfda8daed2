"""Data layer: manifests (validate, fingerprint), public datasets, the patch cache, slide-grouped splits, `glomlib data`."""
