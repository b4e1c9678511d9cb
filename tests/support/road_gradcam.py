"""iscamd's ROAD numbers against pytorch-grad-cam's ROAD (PyPI `grad-cam`), on the same
maps, inputs and model (docs/maps.md, "ROAD").

    python3 road_gradcam.py MODEL.onnx EVAL_OUT MAPS [--images 20] [--noise 0.01]
        [--methods iscam,cam] [--tolerance 0.005] [--mean-tolerance 0.01]

EVAL_OUT is an `iscamd eval --save-maps MAPS --road-noise NOISE` output directory; MODEL the
f32 ONNX model it ran, converted to PyTorch with onnx2torch. For each of the first --images
images and each method, the input and display map iscamd wrote are fed to pytorch-grad-cam's
own `RemoveMostRelevantFirst` / `RemoveLeastRelevantFirst` with its `NoisyLinearImputer`
(scipy's sparse direct solver) and `ClassifierOutputSoftmaxTarget`, at every removal share.

The map handed over is the *rank* of each pixel in iscamd's order (ties broken by pixel
index), not its value: ROAD depends on the map only through that order, and
pytorch-grad-cam's percentile threshold (`cam < np.percentile(cam, p)`) would otherwise
remove all or none of a plateau of equal values (the zeros of a ReLU'd map) at once.

Checks, printed with the measured figures; exit status 1 when one fails:
- with --noise 0 both imputations are deterministic: every p_c (image × method × share ×
  MoRF/LeRF) agrees within --tolerance;
- with noise, each side draws its own: the means over images of MoRF, LeRF and
  (LeRF − MoRF)/2 agree within --mean-tolerance.
"""
import argparse
import csv
import os
import re
import sys

import numpy as np
import torch
import onnx2torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

SHARES = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def file_name(method):
    return re.sub(r"[^A-Za-z0-9=._-]", "_", method)


def rank_map(saliency):
    """1 for iscamd's most salient pixel down to 0 for its least, in iscamd's order."""
    flat = saliency.ravel()
    order = np.argsort(-flat, kind="stable")
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(flat.size - 1, -1, -1) / (flat.size - 1)
    return ranks.reshape(saliency.shape)


def gradcam_road(model, x, cam, cls, noise):
    """p_c after pytorch-grad-cam's MoRF and LeRF removal of each share."""
    target = [ClassifierOutputSoftmaxTarget(cls)]
    curves = {}
    for name, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        curve = []
        for share in SHARES:
            # pytorch-grad-cam's percentile is the share *kept*.
            metric = PerturbationConfidenceMetric(removal(100 - share, NoisyLinearImputer(noise=noise)))
            scores = metric(x, cam[None], target, model, return_diff=False)
            curve.append(float(np.asarray(scores).ravel()[0]))
        curves[name] = curve
    return curves


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("eval_out")
    ap.add_argument("maps")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--methods", default=None, help="comma-separated; default: all but the controls")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--mean-tolerance", type=float, default=0.01)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = onnx2torch.convert(args.model).eval()

    with open(os.path.join(args.eval_out, "per_image.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["road_morf_curve"]]
    methods = args.methods.split(",") if args.methods else [
        m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("random", "center")]
    images = list(dict.fromkeys(r["image"] for r in rows))[: args.images]
    if len(images) < args.images:
        sys.exit(f"road_gradcam: {len(images)} image(s) with ROAD in {args.eval_out}, {args.images} asked for")

    ours, theirs, worst, probability_gap = {}, {}, 0.0, 0.0
    for row in rows:
        if row["image"] not in images or row["method"] not in methods:
            continue
        stem = os.path.splitext(os.path.basename(row["image"]))[0]
        x = np.fromfile(os.path.join(args.maps, f"{stem}.input.f32"), dtype="<f4")
        s = int(round((x.size / 3) ** 0.5))
        x = torch.from_numpy(x.reshape(1, 3, s, s).copy())
        saliency = np.fromfile(os.path.join(args.maps, f"{stem}.{file_name(row['method'])}.saliency.f32"), dtype="<f4")
        cam = rank_map(saliency.reshape(s, s).astype(np.float64))
        cls = int(row["class"])
        with torch.no_grad():
            y = float(torch.softmax(model(x), dim=-1)[0, cls])
        probability_gap = max(probability_gap, abs(y - float(row["y"])))
        g = gradcam_road(model, x, cam, cls, args.noise)
        i = {k: [float(v) for v in row[f"road_{k}_curve"].split()] for k in ("morf", "lerf")}
        for k in ("morf", "lerf"):
            worst = max(worst, max(abs(a - b) for a, b in zip(i[k], g[k])))
        key = (row["image"], row["method"])
        ours[key], theirs[key] = i, g
        print(f"{stem} {row['method']}: MoRF {np.mean(i['morf']):.4f} vs {np.mean(g['morf']):.4f}, "
              f"LeRF {np.mean(i['lerf']):.4f} vs {np.mean(g['lerf']):.4f}", flush=True)

    failed = False
    print(f"\n{len(images)} images × {len(methods)} method(s), {len(SHARES)} shares, noise σ = {args.noise}")
    print(f"p_c of the unmodified input, max |iscamd − torch|: {probability_gap:.2e}")
    if args.noise == 0:
        ok = worst <= args.tolerance
        failed |= not ok
        print(f"every p_c after imputation, max |iscamd − pytorch-grad-cam|: {worst:.2e} "
              f"({'ok' if ok else 'FAILS'}, tolerance {args.tolerance})")
    print("\n| method | iscamd MoRF | grad-cam MoRF | iscamd LeRF | grad-cam LeRF | iscamd (LeRF−MoRF)/2 | grad-cam (LeRF−MoRF)/2 | max |Δ| of means |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in methods:
        keys = [k for k in ours if k[1] == m]
        if not keys:
            continue
        mean = lambda side, k: float(np.mean([np.mean(side[key][k]) for key in keys]))
        a = [mean(ours, "morf"), mean(ours, "lerf")]
        b = [mean(theirs, "morf"), mean(theirs, "lerf")]
        a.append((a[1] - a[0]) / 2)
        b.append((b[1] - b[0]) / 2)
        gap = max(abs(u - v) for u, v in zip(a, b))
        ok = gap <= args.mean_tolerance
        failed |= not ok
        print(f"| {m} | {a[0]:.4f} | {b[0]:.4f} | {a[1]:.4f} | {b[1]:.4f} | {a[2]:.4f} | {b[2]:.4f} | "
              f"{gap:.4f} {'ok' if ok else 'FAILS'} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
