"""External validation: apply a saved model to any labelled manifest (e.g. another hospital) and measure it.

``glomlib evaluate --model M --manifest CSV --out DIR`` (or :func:`run_evaluate` / notebook 06) predicts every
image of a labelled manifest — patches of any size, RGB or RGBA, resized to the model's image size — and writes:

* ``predictions.csv`` — path, slide, patient, center, label, y, ``prob`` (calibrated when the model file carries a
  calibration), ``prob_raw`` (the network's own), ``pred`` (``prob >= threshold``);
* ``metrics.json`` — AUC, accuracy, weighted F1, balanced accuracy, sensitivity, specificity, Brier and ECE with
  slide-bootstrap 95 % CIs, the threshold used and where it came from (the model file's ``threshold`` and
  ``threshold_rule``), per centre, and — for a model written by ``glomlib calibrate`` — before/after calibration;
* ``per_slide.csv``, ``per_center.csv``, ``biopsy_table.csv`` (per-biopsy shares, see :mod:`glomlib.evaluate.biopsy`);
* ``figures/reliability.png``, ``figures/bland_altman.png``; ``config.json``, ``provenance.json``.

Nothing is overwritten: ``--out`` must be new (``auto``: ``runs/<UTC stamp>-evaluate``).
"""

from glomlib.evaluate.external.config import EvaluateConfig, ExternalValidationConfig
from glomlib.evaluate.external.step import cli_run, label_curve, run_evaluate, show_reliability, show_summary
from glomlib.evaluate.external.tables import centre_summary, centre_table, rule_for

__all__ = ["EvaluateConfig", "ExternalValidationConfig", "cli_run", "label_curve", "run_evaluate", "rule_for"]
__all__ += ["show_reliability", "show_summary", "centre_summary", "centre_table"]
