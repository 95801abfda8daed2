"""Bottom layer: step configs and their CLI, paths, atomic writes and run folders, the runtime."""
