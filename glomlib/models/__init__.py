"""Model layer: backbones, classifier heads, model and encoder files, inference."""
