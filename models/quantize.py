#!/usr/bin/env python3
"""Quantize a float ONNX classifier to static int8 that tract runs on its int8 kernels.

    pip install onnx onnxruntime pillow numpy
    python3 models/quantize.py FLOAT.onnx CALIBRATION_DIR -o MODEL-int8.onnx [--per-channel] [--format qdq]

onnxruntime's quantize_static. Which file suits which runtime:
- `--format qoperator` (the default), per-tensor: QLinearConv, which tract executes with its
  integer kernels; the fastest on tract.
- `--per-channel`: one weight scale per output channel, what depthwise networks need to
  keep their accuracy; on tract ~0.8x the per-tensor file's speed (the requantisation is
  a pass of its own rather than part of the matrix kernel).
- `--format qdq`: every quantized op between DequantizeLinear and QuantizeLinear, what
  most toolchains emit and ONNX Runtime's default; iscamd folds its convolutions into
  QLinearConv when it loads the model (docs/models.md), the other ops stay in float.
In the QOperator format only Conv, Relu and MaxPool are quantized by default: with every
op type onnxruntime emits the com.microsoft contrib ops QLinearConcat /
QLinearGlobalAveragePool, which tract cannot load. In the QDQ format every op type
onnxruntime quantizes is (`--ops` to choose).

onnxruntime leaves each Concat in float between a DequantizeLinear per input and a
QuantizeLinear after it. Unless --float-concat, those concatenations are rewritten to run
on the quantized tensors: the convolutions that feed a Concat write their output directly
in the Concat's (calibrated) scale, so the Concat (and a MaxPool after it) moves bytes
instead of converting every activation twice. The float tensor stays available through a
DequantizeLinear of the same name, which tract prunes unless it is asked for (the CAM
layer, a fire module's output, is one of these), so iscamd reads the CAM layer as from the
float model.

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


def share_concat_scales(model):
    """Run each float Concat between DequantizeLinear and QuantizeLinear on quantized data.

    The pattern onnxruntime writes for a fire module is
        QLinearConv -> DequantizeLinear \
                                          Concat [-> MaxPool] -> QuantizeLinear(s, z)
        QLinearConv -> DequantizeLinear /
    which becomes
        QLinearConv(y_scale=s, y_zero_point=z) \
                                                 Concat [-> MaxPool]   (uint8)
        QLinearConv(y_scale=s, y_zero_point=z) /
    plus DequantizeLinear(s, z) views under the old float names. MaxPool commutes with a
    monotonic quantization, so it runs on the quantized values unchanged. Returns how many
    Concats were rewritten.
    """
    from onnx import helper

    graph = model.graph
    # One list of the nodes, held for the whole rewrite: nodes are then told apart by id().
    all_nodes = list(graph.node)
    producer = {out: node for node in all_nodes for out in node.output}
    consumers = {}
    for node in all_nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    inserted = {}  # id(anchor node) -> new nodes that take its place
    dropped = set()
    for concat in [n for n in all_nodes if n.op_type == "Concat"]:
        dequantizes = [producer.get(name) for name in concat.input]
        if not all(d is not None and d.op_type == "DequantizeLinear" and only_consumer(d.output[0]) is concat
                   for d in dequantizes):
            continue
        convs = [producer.get(d.input[0]) for d in dequantizes]
        if not all(c is not None and c.op_type == "QLinearConv" and only_consumer(c.output[0]) is not None
                   for c in convs):
            continue
        pool = only_consumer(concat.output[0])
        if pool is not None and pool.op_type == "QuantizeLinear":
            pool, quantize = None, pool
        elif pool is not None and pool.op_type == "MaxPool":
            quantize = only_consumer(pool.output[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
        else:
            continue

        scale, zero_point = quantize.input[1], quantize.input[2]
        for conv in convs:
            conv.input[6], conv.input[7] = scale, zero_point
        axis = next(a.i for a in concat.attribute if a.name == "axis")
        concat_q = concat.output[0] + "_quantized" if pool is not None else quantize.output[0]
        inserted[id(concat)] = [
            helper.make_node("Concat", [c.output[0] for c in convs], [concat_q], name=concat.name, axis=axis),
            helper.make_node("DequantizeLinear", [concat_q, scale, zero_point], [concat.output[0]],
                             name=concat.name + "_dequantized"),
        ]
        if pool is not None:
            pool_q = helper.make_node("MaxPool", [concat_q], [quantize.output[0]], name=pool.name)
            pool_q.attribute.extend(pool.attribute)
            inserted[id(pool)] = [
                pool_q,
                helper.make_node("DequantizeLinear", [quantize.output[0], scale, zero_point], [pool.output[0]],
                                 name=pool.name + "_dequantized"),
            ]
        dropped.update(id(n) for n in dequantizes + [quantize])

    nodes = []
    for node in all_nodes:
        if id(node) in inserted:
            nodes.extend(inserted[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len([n for n in inserted.values() if n[0].op_type == "Concat"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=pathlib.Path, help="float ONNX model with iscamd metadata_props")
    ap.add_argument("calibration", type=pathlib.Path, help="folder of representative images")
    ap.add_argument("-o", "--out", type=pathlib.Path, required=True)
    ap.add_argument("--per-channel", action="store_true",
                    help="one weight scale per output channel (tract runs these ~3x slower than "
                         "per-tensor scales, ONNX Runtime about as fast)")
    ap.add_argument("--float-concat", action="store_true",
                    help="leave Concat in float between dequantize/quantize pairs, as onnxruntime "
                         "writes it: ~1.45x slower on tract, faster on ONNX Runtime at batch 16 (the "
                         "shipped squeezenet1.0-dc-int8.onnx is --per-channel --float-concat)")
    ap.add_argument("--format", choices=["qoperator", "qdq"], default="qoperator",
                    help="qoperator: QLinearConv ops (fastest on tract); qdq: DequantizeLinear/"
                         "QuantizeLinear around float ops (ONNX Runtime's default)")
    ap.add_argument("--ops", default=None,
                    help="op types to quantize (default: Conv,Relu,MaxPool for qoperator — what "
                         "tract can load —, every type onnxruntime quantizes for qdq)")
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

    per_channel = args.per_channel
    qdq = args.format == "qdq"
    ops_given = args.ops if args.ops is not None else ("" if qdq else "Conv,Relu,MaxPool")
    ops = [o for o in ops_given.split(",") if o]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = pathlib.Path(tmp) / "prepared.onnx"
        quant_pre_process(str(args.model), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(args.out), Reader(),
                        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                        op_types_to_quantize=ops or None, per_channel=per_channel,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)

    out = onnx.load(str(args.out))
    del out.graph.value_info[:]
    concats = 0 if args.float_concat or qdq else share_concat_scales(out)
    onnx.checker.check_model(out)
    del out.metadata_props[:]
    for key, value in meta.items():
        out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key="quantization", value=(
        f"onnxruntime quantize_static, {'QDQ' if qdq else 'QOperator'}, "
        f"{'per-channel' if per_channel else 'per-tensor'} int8 "
        f"weights, uint8 activations, MinMax calibration on {len(images)} images of "
        f"{args.calibration.name}, op types {','.join(ops) or 'all'}, "
        f"{'float Concat' if args.float_concat or qdq else f'{concats} Concat(s) on quantized data'} "
        f"(iscamd models/quantize.py)"))
    onnx.save(out, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), calibrated on {len(images)} images, "
          f"{concats} Concat(s) on quantized data")


if __name__ == "__main__":
    main()
