"""Per-centre table of a leave-one-centre-out study (benchmarks/loco_stain.sh): AUC and per-biopsy %GS error
(mean over seeds ± sample std) for every ``<init>-<stain>`` run folder under OUT, as Markdown for README.

    python benchmarks/loco_table.py runs/loco [--csv loco.csv]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INITS = ("glom", "imagenet", "scratch")
STAINS = {"none": "none", "hed": "HED augmentation (0.05)", "reinhard": "Reinhard", "macenko": "Macenko"}


def main(argv=None) -> int:
    from glomlib.evaluate.external import centre_summary

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="runs/loco")
    p.add_argument("--csv", default=None, help="also write the long table here")
    a = p.parse_args(argv)
    runs = {f"{i}-{s}": Path(a.out) / f"{i}-{s}" / "predictions.csv" for i in INITS for s in STAINS}
    found = {k: pd.read_csv(v, keep_default_na=False) for k, v in runs.items() if v.is_file()}
    missing = [k for k, v in runs.items() if not v.is_file()]
    if not found:
        raise SystemExit(f"no finished run under {a.out}; run benchmarks/loco_stain.sh first")
    t = centre_summary(found)
    if a.csv:
        t.to_csv(a.csv, index=False)
    centres = list(dict.fromkeys(t["centre"]))
    f = lambda m, sd: f"{m:.3f} ± {sd:.3f}" if pd.notna(sd) else f"{m:.3f}"  # noqa: E731
    head = ["init / stain option"] + [f"AUC {c}" for c in centres] + [f"%GS MAE {c} (prob / hard)" for c in centres]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in found:
        i, s = name.split("-", 1)
        r = t[t["run"] == name].set_index("centre")
        cells = [f"{i} / {STAINS[s]}"] + [f(r.at[c, "auc"], r.at[c, "auc_sd"]) for c in centres]
        cells += [f"{100 * r.at[c, 'biopsy_mae_prob']:.1f} / {100 * r.at[c, 'biopsy_mae_hard']:.1f}" for c in centres]
        print("| " + " | ".join(cells) + " |")
    n = sorted(set(t["seeds"]))
    print(
        f"\nmean ± sample std over {n} seed(s) per held-out centre; %GS MAE in percentage points (mean over seeds of "
        "the mean absolute error over the centre's biopsies; prob = mean probability, hard = share of calls at 0.5)"
    )
    counts = t.drop_duplicates("centre").set_index("centre")
    print(
        "centres: "
        + ", ".join(f"{c} {int(counts.at[c, 'n'])} glomeruli ({int(counts.at[c, 'n_pos'])} GS)" for c in centres)
    )
    if missing:
        print(f"not (yet) run: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
