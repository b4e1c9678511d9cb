#!/usr/bin/env python3
"""Checks iscamd's Recipro-CAM against OpenVINO XAI's (the reference implementation).

For each image, iscamd's own model input (`iscamd eval --save-maps`) goes through OpenVINO
XAI's ReciproCAM for the class iscamd explains, and the two maps (at the CAM layer's
resolution) are compared by Pearson's r. Prints the median and the minimum, and the worst
images.

    pip install openvino-xai      # openvino 2024.4, openvino-xai 1.1
    scripts/recipro-reference.py --model ../shared/models/squeezenet1.0-dc.onnx \
        --layer fire9/concat ../shared/images

ISCAMD names the iscamd binary (default: target/release/iscamd). --cam-layer is passed
to iscamd too; OpenVINO XAI is given the node that writes that tensor.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import openvino as ov
from openvino_xai.methods.white_box.recipro_cam import ReciproCAM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", required=True, help="the CAM layer's tensor name")
    ap.add_argument("--limit", type=int, default=250)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    iscamd = os.environ.get("ISCAMD", "target/release/iscamd")
    work = pathlib.Path(tempfile.mkdtemp())
    common = ["--model", args.model, "--cam-layer", args.layer]
    subprocess.run(
        [iscamd, "eval", *args.images, "--methods", "recipro", "--save-maps", str(work / "in"),
         "--road", "none", "--steps", "1", "--limit", str(args.limit), "--out", str(work / "eval"),
         *common],
        check=True, stdout=subprocess.DEVNULL)
    inputs = sorted((work / "in").glob("*.input.f32"))
    paths = []
    for image in args.images:
        p = pathlib.Path(image)
        paths += sorted(p.iterdir()) if p.is_dir() else [p]
    by_stem = {p.stem: p for p in paths}
    wanted = [by_stem[i.name[: -len(".input.f32")]] for i in inputs]
    out = subprocess.run(
        [iscamd, "explain", *map(str, wanted), "--method", "recipro", "--format", "json", *common],
        check=True, capture_output=True, text=True).stdout
    records = {pathlib.Path(r["image"]).stem: r for r in map(json.loads, out.splitlines())}

    core = ov.Core()
    model = core.read_model(args.model)
    writer = next(op for op in model.get_ordered_ops()
                  if any(args.layer in o.get_names() for o in op.outputs()))
    method = ReciproCAM(model, target_layer=writer.get_friendly_name(), prepare_model=False)
    # In f32: OpenVINO's CPU plugin defaults to bf16 where the CPU has it (AVX512-BF16, AMX).
    method._model_compiled = core.compile_model(
        method.prepare_model(load_model=False), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rs = []
    for path in inputs:
        stem = path.name[: -len(".input.f32")]
        r = records[stem]
        h, w = r["map"]["height"], r["map"]["width"]
        x = np.fromfile(path, dtype="<f4")
        side = int(round((x.size / 3) ** 0.5))
        x = x.reshape(1, 3, side, side)
        maps = method.generate_saliency_map(x)
        ref = np.asarray(maps[0, r["class"]["index"]], dtype=np.float64).reshape(h * w)
        ours = np.asarray(r["map"]["values"], dtype=np.float64)
        rs.append((float(np.corrcoef(ref, ours)[0, 1]), stem))
    rs.sort()
    values = np.array([r for r, _ in rs])
    print(f"{len(rs)} images: median r = {np.median(values):.5f}, min r = {values.min():.5f} "
          f"({rs[0][1]}), share ≥ 0.99: {(values >= 0.99).mean():.3f}")
    for r, stem in rs[:5]:
        print(f"  {stem}: r = {r:.5f}")


if __name__ == "__main__":
    sys.exit(main())
