"""Evaluation layer: metrics, probes, prediction, comparison, audit, error analysis and their figures."""
