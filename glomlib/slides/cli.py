"""``glomlib slides ...``: whole-slide images and QuPath outlines in, a glomlib dataset out, predictions back.

    glomlib slides inspect SLIDE [--reader R] [--mpp X]
    glomlib slides extract SLIDES_CSV --out DIR [--target-mpp X] [--context F] [--size N] [--reader R]
    glomlib slides export PREDICTIONS_CSV --manifest DIR/manifest.csv --out GEOJSON_DIR

Exit status: 0 = fine, 1 = a slide, annotation or prediction problem (the message names the slide and
annotation), 2 = usage error, 3 = an output that would be overwritten.
"""

from __future__ import annotations

import json
import sys

from glomlib.slides.read import DEFAULT_READER, READERS, SlideError

EXIT_DATA, EXIT_OUTPUT = 1, 3


def _err(msg: str) -> None:
    print(f"glomlib slides: error: {msg}", file=sys.stderr)


def inspect_cmd(args) -> int:
    from glomlib.slides.read import open_slide, slide_info

    try:
        slide = open_slide(args.slide, args.reader, mpp=args.mpp)
    except SlideError as e:
        _err(str(e))
        return EXIT_DATA
    info = slide_info(slide)
    slide.close()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mpp = f"{info['mpp']:.4g} um/px" if info["mpp"] else "unknown"
    print(
        f"{info['slide']}: {info['width']} x {info['height']} px, {len(info['levels'])} level(s), reader "
        f"{info['reader']}{', vendor ' + info['vendor'] if info['vendor'] else ''}\n"
        f"MPP {mpp} ({info['mpp_source']}); bounds offset {tuple(info['bounds_offset'])}"
    )
    for lv in info["levels"]:
        print(
            f"  level {lv['level']}: {lv['width']} x {lv['height']}  downsample {lv['downsample']:g}"
            + (f"  {lv['mpp']:.4g} um/px" if lv["mpp"] else "")
        )
    return 0


def extract_cmd(args) -> int:
    from glomlib.slides.dataset import extract_dataset
    from glomlib.slides.extract import ExtractOptions

    opts = ExtractOptions(
        target_mpp=args.target_mpp, context=args.context, size=args.size, reader=args.reader, classes=args.classes or ""
    )
    try:
        m = extract_dataset(
            args.slides_csv,
            args.out,
            opts,
            workers=args.workers,
            positive_label=args.positive_label,
            progress=not args.no_progress,
            log=lambda s: print(s, file=sys.stderr),
        )
    except SlideError as e:
        _err(str(e))
        return EXIT_DATA
    except FileExistsError as e:
        _err(str(e))
        return EXIT_OUTPUT
    print(f"wrote {m} (check it with: glomlib data check {m})")
    return 0


def export_cmd(args) -> int:
    from glomlib.slides.export import export_predictions, model_settings

    settings = model_settings(args.model) if args.model else {}  # a bad model file: exit 5 (glomlib.cli)
    if args.threshold is not None:
        settings["threshold"] = args.threshold
    if args.positive_label:
        settings["positive_label"] = args.positive_label
    try:
        paths = export_predictions(
            args.predictions, args.manifest, args.out, object_type=args.object_type, margin=args.margin, **settings
        )
    except SlideError as e:
        _err(str(e))
        return EXIT_DATA
    n = sum(p.suffix == ".geojson" for p in paths)
    print(f"wrote {n} QuPath GeoJSON file(s), biopsies.csv and review.csv to {args.out}")
    return 0


def _extract_parser(sub) -> None:
    e = sub.add_parser("extract", help="cut crops + masks along QuPath outlines into DIR/manifest.csv")
    e.add_argument("slides_csv", help="CSV with columns slide,wsi,annotations[,biopsy,patient,center,mpp]")
    e.add_argument("--out", required=True, help="output folder (an interrupted run resumes in it)")
    e.add_argument("--target-mpp", type=float, default=None, help="um/px of the crops (default: each slide's own)")
    e.add_argument("--context", type=float, default=0.25, help="share of the outline's box added on each side")
    e.add_argument(
        "--size",
        type=int,
        default=0,
        help="N x N crops at the target MPP centred on the outline instead of box + context (default 0: box + context)",
    )
    e.add_argument("--reader", choices=READERS, default=DEFAULT_READER, help="slide reader (default %(default)s)")
    e.add_argument("--classes", default=None, help="JSON {class: label} or CSV name,label mapping QuPath classes")
    e.add_argument("--workers", type=int, default=2, help="slides read in parallel (default %(default)s)")
    e.add_argument("--positive-label", default="", help="positive class for dataset.json (default GS or M1 if present)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=extract_cmd)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "slides",
        help="whole-slide images + QuPath outlines -> dataset; predictions -> QuPath",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="slides_command", metavar="SLIDES_COMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    i = sub.add_parser("inspect", help="levels, dimensions, MPP and its source, bounds offset of a slide")
    i.add_argument("slide", help="slide file (.svs, .tif, .ndpi, .mrxs ...)")
    i.add_argument("--reader", choices=READERS, default=DEFAULT_READER, help="slide reader (default %(default)s)")
    i.add_argument("--mpp", type=float, default=None, help="override the MPP (um/px at level 0)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=inspect_cmd)
    _extract_parser(sub)

    x = sub.add_parser("export", help="predictions -> one QuPath GeoJSON per slide + per-biopsy table")
    x.add_argument("predictions", help="predictions CSV of glomlib predict on the slides manifest")
    x.add_argument("--manifest", required=True, help="DIR/manifest.csv written by glomlib slides extract")
    x.add_argument("--out", required=True, help="folder for <slide>.geojson, biopsies.csv, review.csv")
    x.add_argument(
        "--object-type",
        choices=("annotation", "detection"),
        default="annotation",
        help="QuPath object type of the exported outlines (default %(default)s)",
    )
    x.add_argument(
        "--model",
        default=None,
        help="the model.safetensors that predicted: its threshold, positive label "
        "and whether its probabilities are calibrated",
    )
    x.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's, else 0.5)")
    x.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="a probability within this of the threshold is low confidence (listed for review)",
    )
    x.add_argument("--positive-label", default="", help="positive class (default: dataset.json's)")
    x.set_defaults(func=export_cmd)
