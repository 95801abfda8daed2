"""Bottom layer: config dataclasses and their CLI, project paths, atomic file writes and run folders, provenance, runtime."""
