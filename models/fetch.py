#!/usr/bin/env python3
"""Get a model iscamd can run, and record how to feed it.

    python3 models/fetch.py                      # SqueezeNet 1.0 from the ONNX model zoo → models/
    python3 models/fetch.py --annotate MODEL.onnx --mean ... --std ...   # any classifier

iscamd reads preprocessing and the CAM layer from the model's metadata_props
(see models/README.md). This script downloads the model zoo's SqueezeNet 1.0 with a
pinned sha256, finds the CAM layer (the input of the last convolution, i.e. the last
fire module's concat for SqueezeNet) and writes the metadata. Needs `pip install onnx`.
"""
import argparse
import hashlib
import pathlib
import sys
import urllib.request

ZOO_URL = ("https://github.com/onnx/models/raw/main/validated/vision/classification/"
           "squeezenet/model/squeezenet1.0-8.onnx")
ZOO_SHA256 = "3c0bff2f7c984350d3ffa98e0167dc08c15da88f05d0c31989ebeba6fbb5e025"
ZOO_SIZE = 4952222
# The zoo's SqueezeNet takes RGB 224x224 scaled to 0..1 and normalised with ImageNet's
# mean/std, and outputs softmax probabilities.
ZOO_META = {
    "channel_order": "RGB",
    "pixel_range": "0-255",
    "mean": "123.675,116.28,103.53",
    "std": "58.395,57.12,57.375",
    "input_size": "224",
    "resize": "256",
    "output_kind": "probabilities",
    "labels": "imagenet1k",
    "source": ZOO_URL,
    "source_sha256": ZOO_SHA256,
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cam_layer(model):
    """The input tensor of the last Conv node: the feature map a CAM weights."""
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "QLinearConv")]
    if not convs:
        sys.exit("no convolution in the model: give --cam-layer NAME")
    return convs[-1].input[0]


def annotate(path, meta):
    import onnx
    model = onnx.load(str(path))
    meta = dict(meta)
    meta.setdefault("cam_layer", cam_layer(model))
    meta.setdefault("input_name", model.graph.input[0].name)
    meta.setdefault("output_name", model.graph.output[0].name)
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.save(model, str(path))
    for k, v in sorted(meta.items()):
        print(f"  {k} = {v}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "squeezenet1.0-zoo.onnx"))
    ap.add_argument("--annotate", metavar="MODEL", help="only write metadata into this ONNX file")
    for key in ("channel_order", "pixel_range", "mean", "std", "input_size", "resize", "cam_layer",
                "output_kind", "labels"):
        ap.add_argument("--" + key.replace("_", "-"), dest=key)
    args = ap.parse_args()
    given = {k: v for k, v in vars(args).items() if k not in ("out", "annotate") and v is not None}

    if args.annotate:
        annotate(pathlib.Path(args.annotate), given)
        return
    out = pathlib.Path(args.out)
    tmp = out.with_suffix(".download")
    print(f"downloading {ZOO_URL}")
    urllib.request.urlretrieve(ZOO_URL, tmp)
    digest = sha256(tmp)
    if digest != ZOO_SHA256 or tmp.stat().st_size != ZOO_SIZE:
        tmp.unlink()
        sys.exit(f"checksum mismatch: got {digest}, expected {ZOO_SHA256}; nothing written")
    tmp.rename(out)
    print(f"{out}: sha256 ok; writing metadata")
    annotate(out, {**ZOO_META, **given})
    print(f"labels: copy an ImageNet-1k labels file (1000 lines, 'WNID name') to {out.parent}/imagenet1k_labels.txt")


if __name__ == "__main__":
    main()
