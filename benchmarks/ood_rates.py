"""Out-of-distribution refusal: false refusals on FracAtlas films, catch rate per kind of wrong image.

    python benchmarks/ood_rates.py [--model MODEL] [--data ../shared/data/fracatlas] [--json OUT.json]

With the model's OOD reference (``fracdet fit-ood``) and its recorded split:

- false refusals: FracAtlas validation films (where the threshold was chosen) and test films
  (reported once: nothing is chosen on them) that come out ``not assessable``;
- inverted test films (1 − pixels): detected (not assessable as inverted, or corrected with a
  warning), corrected, and how far the corrected probability is from the upright film's;
- catch rate per kind of wrong image (benchmarks/ood_images.py: blank, colour and greyscale
  photographs, screenshots, noise, a chest radiograph, CT/MR slices): ``not assessable`` or, for
  DICOM of a non-radiograph modality, refused by the DICOM reader (an error row).

Prints a Markdown table (the README's). Needs ../shared/data/fracatlas, scikit-image and
pydicom-data (the dev extra). Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from fracdet.cpu import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ood_images  # noqa: E402

FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"


def _check_of(reason: str) -> str:
    """Which check refused an image, from its reason."""
    for key, name in (("blank", "blank"), ("colour", "colour"), ("noise", "noise"), ("too small", "size"),
                      ("body part", "body part"), ("unlike", "features"), ("positive is still", "features (corrected)"),
                      ("inverted", "inverted")):
        if key in reason:
            return name
    return "other"


def _predict(predictor, paths, batch_size: int) -> list:
    from fracdet.io.dicom import DicomOptions

    return list(predictor.predict_paths(paths, batch_size=batch_size, dicom=DicomOptions()))


def _inverted_copies(paths: list[Path], folder: Path) -> dict[str, Path]:
    """Each film's negative (1 − pixels as fracdet reads it) as an 8-bit PNG."""
    from fracdet.io.images import read_image

    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        x = read_image(p)
        q = folder / (p.stem + "-inverted.png")
        Image.fromarray(np.clip((1.0 - x.pixels) * 255 + 0.5, 0, 255).astype(np.uint8)).save(q)
        out[str(p)] = q
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="artifact (default: the shipped model)")
    ap.add_argument("--data", default=str(FRACATLAS))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    a = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.ERROR)
    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import select_samples
    from fracdet.inference import load_model

    started = time.perf_counter()
    predictor = load_model(a.model)
    art = predictor.artifact
    if art.ood_reference() is None:
        sys.exit("the model has no OOD reference: fit one with `fracdet fit-ood`")
    ds = load_dataset(a.data)
    results: dict[str, dict] = {}
    rows = []

    films = {}
    for split in ("val", "test"):
        samples, note = select_samples(ds, split, art.training, art.data, art.recorded_split())
        films[split] = [Path(s.path) for s in samples]
        preds = _predict(predictor, films[split], a.batch_size)
        read = [p for p in preds if p.ok]
        refused = [p for p in read if not p.assessable]
        warned = [p for p in read if p.warning]
        labels = {str(s.path): s.label for s in samples}
        results[f"fracatlas_{split}"] = {"n": len(read), "refused": len(refused), "warned": len(warned),
                                         "rate": len(refused) / max(len(read), 1), "note": note,
                                         "refused_fractured": sum(labels.get(str(p.path)) == 1 for p in refused),
                                         "fractured": sum(labels.get(str(p.path)) == 1 for p in read),
                                         "checks": dict(Counter(_check_of(p.reason or "") for p in refused))}
        rows.append((f"FracAtlas {split} films (false refusals{'; reported once' if split == 'test' else ''})",
                     len(read), len(refused), {**results[f"fracatlas_{split}"]["checks"],
                                               **({"(judged with a warning)": len(warned)} if warned else {})}))
        if split == "test":
            upright = {str(p.path): p for p in read if p.assessable}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inverted = _inverted_copies(films["test"], root / "inverted")
        preds = _predict(predictor, list(inverted.values()), a.batch_size)
        by_path = {str(p.path): p for p in preds}
        from fracdet.inference.assess import INVERTED_WARNING

        detected = corrected = flagged = 0
        deltas = []
        for original, inv in inverted.items():
            p = by_path.get(str(inv))
            if p is None or not p.ok:
                continue
            if p.warning == INVERTED_WARNING:
                corrected += 1
                detected += 1
                if original in upright:
                    deltas.append(abs(p.probability - upright[original].probability))
            elif not p.assessable:
                detected += 1
            elif p.warning:  # judged as it is, with a warning to check the display
                flagged += 1
        n_inv = sum(p.ok for p in preds)
        results["inverted_test"] = {"n": n_inv, "detected": detected, "corrected": corrected, "flagged": flagged,
                                    "mean_abs_dp_corrected": float(np.mean(deltas)) if deltas else None,
                                    "p99_abs_dp_corrected": float(np.quantile(deltas, 0.99)) if deltas else None}

        for kind, make in ood_images.KINDS.items():
            paths = make(root / kind.replace(" ", "_").replace("/", ""))
            preds = _predict(predictor, paths, a.batch_size)
            refused = [p for p in preds if p.ok and not p.assessable]
            errors = [p for p in preds if not p.ok]
            files = {str(p.path) for p in preds}
            caught = {str(p.path) for p in refused + errors}
            judged = sorted(str(Path(p.path).name) for p in preds if p.assessable)
            results[kind] = {"n": len(files), "caught": len(caught), "not_assessable": len(refused),
                             "reader_errors": len(errors), "rate": len(caught) / max(len(files), 1),
                             "missed": judged,
                             "checks": dict(Counter(_check_of(p.reason or "") for p in refused))}
            rows.append((kind, len(files), len(caught), results[kind]["checks"] or
                         ({"DICOM reader (modality)": len(errors)} if errors else {})))

    elapsed = time.perf_counter() - started
    print(f"model: {a.model or 'shipped default'} (sha256 {art.sha256[:12]}); OOD: {art.ood.get('method')}, "
          f"threshold {art.ood.get('threshold', float('nan')):.1f} ({art.ood.get('threshold_rule')})")
    print(f"CPU: {cpu_model()}, {len(__import__('os').sched_getaffinity(0))} cores; {elapsed:.0f} s\n")
    print("| images | n | refused | rate | by check |\n|---|---|---|---|---|")
    for name, n, k, checks in rows:
        by = ", ".join(f"{c} {m}" for c, m in sorted(checks.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {n} | {k} | {100 * k / max(n, 1):.1f}% | {by} |")
    inv = results["inverted_test"]
    print(f"| inverted FracAtlas test films | {inv['n']} | {inv['detected']} detected "
          f"({inv['corrected']} corrected, {inv['detected'] - inv['corrected']} refused) | "
          f"{100 * inv['detected'] / max(inv['n'], 1):.1f}% | {inv['flagged']} more judged with a warning |")
    for split in ("val", "test"):
        r = results[f"fracatlas_{split}"]
        print(f"\nFracAtlas {split}: {r['refused_fractured']} of the {r['refused']} refused films are fractured "
              f"({r['fractured']} of {r['n']} in the split)", end="")
    print()
    if inv["mean_abs_dp_corrected"] is not None:
        print(f"\ncorrected inverted films vs their upright film: mean |Δp| {inv['mean_abs_dp_corrected']:.4f}, "
              f"p99 {inv['p99_abs_dp_corrected']:.4f}")
    for kind, r in results.items():
        if r.get("missed"):
            print(f"missed ({kind}): {', '.join(r['missed'])}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
