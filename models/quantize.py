#!/usr/bin/env python3
"""Quantize a float ONNX classifier to static int8 that tract runs on its int8 kernels.

    pip install onnx onnxruntime pillow numpy
    python3 models/quantize.py FLOAT.onnx CALIBRATION_DIR -o MODEL-int8.onnx [--per-tensor]

onnxruntime's quantize_static in the QOperator format (QLinearConv), which tract executes
with integer kernels; the QDQ format would run in float in tract. Only Conv, Relu and
MaxPool are quantized by default: with every op type onnxruntime emits the com.microsoft
contrib ops QLinearConcat / QLinearGlobalAveragePool, which tract cannot load. The CAM
layer stays a float tensor, so iscamd reads it as from the float model.

Calibration images are preprocessed as iscamd does it, from the float model's
metadata_props (resize, crop, channel order, mean, std); those metadata_props are copied
into the output, with a `quantization` entry saying how it was made. Intermediate
value_info is dropped (its symbolic batch dimension makes tract fail on a fixed batch).

Check the result with `iscamd classify --model MODEL-int8.onnx DIR` (accuracy) and
`iscamd bench --compare FLOAT.onnx --compare MODEL-int8.onnx` (speed).
"""

import argparse
import pathlib
import random
import sys
import tempfile

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def fail(message):
    sys.exit(f"quantize.py: {message}")


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def floats(meta, key, default):
    try:
        return [float(v) for v in meta.get(key, default).split(",")]
    except ValueError:
        fail(f"metadata {key}={meta[key]!r} is not a comma-separated list of numbers")


class Preprocess:
    """iscamd's preprocessing (src/model/preprocess.rs) from the model's metadata."""

    def __init__(self, meta):
        self.size = int(meta.get("input_size", "224"))
        self.resize = int(meta.get("resize", str(self.size)))
        self.bgr = meta.get("channel_order", "RGB").upper() == "BGR"
        self.mean = floats(meta, "mean", "0,0,0")
        self.std = floats(meta, "std", "1,1,1")
        self.scale = 1.0 / 255.0 if meta.get("pixel_range", "0-255") == "0-1" else 1.0

    def __call__(self, path):
        import numpy as np
        from PIL import Image

        img = Image.open(path).convert("RGB").resize((self.resize, self.resize), Image.BILINEAR)
        # torchvision's centre crop: offset rounded half to even (14 for 227 of 256).
        off = round((self.resize - self.size) / 2)
        img = img.crop((off, off, off + self.size, off + self.size))
        x = np.asarray(img, dtype=np.float32) * self.scale
        if self.bgr:
            x = x[:, :, ::-1]
        x = (x - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=pathlib.Path, help="float ONNX model with iscamd metadata_props")
    ap.add_argument("calibration", type=pathlib.Path, help="folder of representative images")
    ap.add_argument("-o", "--out", type=pathlib.Path, required=True)
    ap.add_argument("--per-tensor", action="store_true",
                    help="one weight scale per tensor instead of per output channel")
    ap.add_argument("--ops", default="Conv,Relu,MaxPool",
                    help="op types to quantize (default: what tract can load: Conv,Relu,MaxPool)")
    ap.add_argument("--limit", type=int, default=200, help="calibration images at most (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="which images, when there are more than --limit")
    args = ap.parse_args()

    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        fail(f"{e.name} is missing: pip install onnx onnxruntime pillow numpy")

    if not args.model.is_file():
        fail(f"{args.model}: no such model file")
    images = sorted(p for p in args.calibration.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        fail(f"{args.calibration}: no images (.jpg, .png, .bmp, .webp) to calibrate on")
    if len(images) > args.limit:
        images = sorted(random.Random(args.seed).sample(images, args.limit))
    model = onnx.load(str(args.model))
    meta = metadata(model)
    input_name = meta.get("input_name") or model.graph.input[0].name
    preprocess = Preprocess(meta)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.todo = iter(images)

        def get_next(self):
            for path in self.todo:
                try:
                    return {input_name: preprocess(path)}
                except OSError as e:
                    print(f"skipping {path}: {e}", file=sys.stderr)
            return None

    per_channel = not args.per_tensor
    ops = [o for o in args.ops.split(",") if o]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = pathlib.Path(tmp) / "prepared.onnx"
        quant_pre_process(str(args.model), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(args.out), Reader(), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=ops, per_channel=per_channel,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)

    out = onnx.load(str(args.out))
    del out.graph.value_info[:]
    del out.metadata_props[:]
    for key, value in meta.items():
        out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key="quantization", value=(
        f"onnxruntime quantize_static, QOperator, {'per-channel' if per_channel else 'per-tensor'} int8 "
        f"weights, uint8 activations, MinMax calibration on {len(images)} images of "
        f"{args.calibration.name}, op types {','.join(ops)} (iscamd models/quantize.py)"))
    onnx.save(out, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), calibrated on {len(images)} images")


if __name__ == "__main__":
    main()
