"""Model layer: backbones (ImageNet weights offline), classifier heads, model and encoder files (safetensors + metadata)."""
