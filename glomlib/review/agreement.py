"""The model measured against several raters and against their consensus, next to the raters' agreement with each other.

With a manifest that carries ``label_<rater>`` columns (see :mod:`glomlib.data.raters`) and a run's
out-of-fold predictions, :func:`kappa_matrix` gives Cohen's kappa between every pair of "readers" — the
model (its calls at ``threshold``), each rater, and the majority consensus — and :func:`model_vs_raters`
one row per reference: the model's kappa, accuracy and AUC against that reference, and for a rater, the mean
kappa of that rater with the other raters. If the model's kappa with the raters is as high as theirs with each
other, the model is as good as the labels allow to measure.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from glomlib.data.manifest import read_manifest
from glomlib.data.raters import cohen_kappa, consensus, rater_columns, rater_name
from glomlib.review.explain.inputs import load_predictions
from glomlib.review.labels.config import run_manifest

MODEL = "model"
CONSENSUS = "consensus"


def readers(
    pred: pd.DataFrame, manifest: pd.DataFrame, positive_label: str, negative_label: str, threshold: float = 0.5
) -> pd.DataFrame:
    """One column of labels per reader (model, each rater, consensus; "" = no label), one row per image
    of ``pred`` (joined with ``manifest`` on ``path``), plus the model's ``prob``."""
    cols = rater_columns(manifest)
    if not cols:
        raise ValueError("the manifest has no rater columns ('label_<rater>'); nothing to compare the model with.")
    m = manifest.set_index("path")
    missing = [p for p in pred["path"] if p not in m.index]
    if missing:
        raise ValueError(f"{len(missing)} predicted image(s) are not in the manifest, e.g. {missing[:3]}.")
    sub = m.loc[pred["path"]].reset_index()
    out = pd.DataFrame({"path": pred["path"].to_numpy(), "prob": pred["prob"].astype(float).to_numpy()})
    out[MODEL] = np.where(out["prob"] >= threshold, positive_label, negative_label)
    for c in cols:
        out[rater_name(c)] = sub[c].astype(str).str.strip().to_numpy()
    out[CONSENSUS] = consensus(sub, cols)["consensus"].to_numpy()
    out.attrs.update(raters=[rater_name(c) for c in cols], positive_label=positive_label)
    return out


def kappa_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa between every two readers of :func:`readers` (symmetric; diagonal 1)."""
    names = [MODEL, *table.attrs["raters"], CONSENSUS]
    k = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b in itertools.combinations(names, 2):
        k.loc[a, b] = k.loc[b, a] = cohen_kappa(table[a], table[b])
    return k


def model_vs_raters(table: pd.DataFrame) -> pd.DataFrame:
    """Per reference (each rater, then consensus): images, the model's kappa / accuracy / AUC against it, and
    for a rater the mean kappa with the other raters (the agreement the model should be judged against)."""
    raters = table.attrs["raters"]
    pos = table.attrs["positive_label"]
    rows = []
    for ref in [*raters, CONSENSUS]:
        lab = table[ref]
        ok = lab != ""
        y = (lab[ok] == pos).astype(int)
        auc = roc_auc_score(y, table.loc[ok, "prob"]) if y.nunique() == 2 else float("nan")
        others = [cohen_kappa(table[ref], table[o]) for o in raters if o != ref] if ref != CONSENSUS else []
        rows.append(
            {
                "reference": ref,
                "images": int(ok.sum()),
                "model_kappa": cohen_kappa(table[MODEL], lab),
                "model_accuracy": float((table.loc[ok, MODEL] == lab[ok]).mean()),
                "model_auc": float(auc),
                "rater_kappa_with_other_raters": float(np.mean(others)) if others else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def run_agreement(
    run_dir, data: str = "", threshold: float = 0.5, label_fraction: float = 1.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For a fine-tune run and a manifest with rater columns (``data``; "" = the run's manifest): the
    :func:`model_vs_raters` table and the :func:`kappa_matrix`, from the run's out-of-fold predictions."""
    pred = load_predictions(run_dir, label_fraction, threshold)
    pos = str(pred.loc[pred["y"] == 1, "label"].iloc[0])
    neg = str(pred.loc[pred["y"] == 0, "label"].iloc[0])
    man = read_manifest(run_manifest(Path(run_dir), data), positive_label=pos, negative_label=neg, require_labels=False)
    table = readers(pred, man, pos, neg, threshold)
    return model_vs_raters(table), kappa_matrix(table)
