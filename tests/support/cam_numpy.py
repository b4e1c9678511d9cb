"""The class activation map of Zhou et al. computed with NumPy and onnxruntime, as an
outside reference for iscamd's `cam` method (tests/it/cam_method.rs).

    python3 cam_numpy.py squeezenet MODEL.onnx INPUT.npy OUT.npy [ACTIVATIONS.f32]
        runs MODEL on INPUT with onnxruntime, reads the 1x1 convolution after the CAM layer
        (float Conv, or QLinearConv dequantized) with onnx.numpy_helper, and writes
        ReLU(sum_k w[c,k] A_k + b[c]) for the top-1 class c; prints c. With ACTIVATIONS
        (raw little-endian f32 of the CAM layer's shape), A is those instead of
        onnxruntime's: the weights alone are then under test.
    python3 cam_numpy.py toys DIR
        writes small classifiers to DIR: gemm.onnx (GlobalAveragePool -> Flatten -> Gemm
        after the CAM layer), matmul.onnx (-> MatMul -> Add) and maxpool.onnx (a head the
        cam method cannot use), an input toy.input.npy, and for the first two the map of
        the top-1 class and that class (NAME.map.npy, NAME.class.txt).
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto


def run(model, x, outputs):
    """onnxruntime on `model` (a ModelProto) with extra graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for name in outputs:
        if name not in known:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, {sess.get_inputs()[0].name: x})


def squeezenet(model_path, input_path, out_path, activations_path=None):
    model = onnx.load(model_path)
    meta = {p.key: p.value for p in model.metadata_props}
    cam, logits_name = meta["cam_layer"], meta.get("output_name", model.graph.output[0].name)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    node = consumers[cam][0]
    if node.op_type == "QuantizeLinear":
        node = consumers[node.output[0]][0]
    if node.op_type == "Conv":
        w = inits[node.input[1]][:, :, 0, 0]
        b = inits[node.input[2]]
    elif node.op_type == "QLinearConv":
        x_scale = inits[node.input[1]]
        w_scale = inits[node.input[4]].reshape(-1)
        w_zero = inits[node.input[5]].reshape(-1)
        wq = inits[node.input[3]][:, :, 0, 0]
        w = (wq - w_zero[:, None]) * w_scale[:, None]
        b = inits[node.input[8]] * x_scale * w_scale
    else:
        sys.exit(f"unexpected head op {node.op_type}")
    x = np.load(input_path).astype(np.float32)
    logits, act = run(model, x, [logits_name, cam])
    c = int(np.argmax(logits[0]))
    a = act[0].astype(np.float64)
    if activations_path:
        a = np.fromfile(activations_path, dtype="<f4").reshape(a.shape).astype(np.float64)
    cam_map = np.maximum(np.tensordot(w[c], a, axes=(0, 0)) + b[c], 0.0)
    np.save(out_path, cam_map.astype(np.float32))
    print(c)


def toy(head):
    """A 3x16x16 input, a 3x3 conv of 6 channels as the CAM layer ("features"), ReLU, then
    `head` nodes producing "logits" over 5 classes."""
    rng = np.random.default_rng(7)
    conv_w = numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "conv_w")
    conv_b = numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "conv_b")
    nodes = [
        helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
    ]
    inits = [conv_w, conv_b]
    if head == "gemm":
        fc = rng.normal(size=(5, 6)).astype(np.float32)
        inits += [numpy_helper.from_array(fc, "fc_w"),
                  numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "fc_b")]
        nodes += [helper.make_node("GlobalAveragePool", ["features"], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, alpha=0.5)]
        weights, bias = 0.5 * fc, inits[-1]
    elif head == "matmul":
        fc = rng.normal(size=(6, 5)).astype(np.float32)
        inits += [numpy_helper.from_array(fc, "fc_w"),
                  numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "fc_b")]
        nodes += [helper.make_node("GlobalAveragePool", ["features"], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]),
                  helper.make_node("Add", ["mm", "fc_b"], ["logits"])]
        weights, bias = fc.T, inits[-1]
    else:
        nodes += [helper.make_node("MaxPool", ["features"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("GlobalAveragePool", ["pooled"], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["logits"])]
        weights, bias = None, None
    graph = helper.make_graph(
        nodes, f"toy_{head}",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5 if head != "maxpool" else 6])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in {"cam_layer": "features", "input_size": "16", "resize": "16",
                       "mean": "0,0,0", "std": "1,1,1", "pixel_range": "0-1",
                       "channel_order": "RGB"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model, weights, None if bias is None else numpy_helper.to_array(bias)


def toys(out_dir):
    x = np.random.default_rng(11).uniform(size=(1, 3, 16, 16)).astype(np.float32)
    np.save(f"{out_dir}/toy.input.npy", x)
    for head in ["gemm", "matmul", "maxpool"]:
        model, w, b = toy(head)
        onnx.checker.check_model(model)
        onnx.save(model, f"{out_dir}/{head}.onnx")
        if w is None:
            continue
        logits, act = run(model, x, ["logits", "features"])
        c = int(np.argmax(logits[0]))
        # The head pools first: its bias adds the same to every place and is left out (Zhou et al.).
        cam_map = np.maximum(np.tensordot(w[c].astype(np.float64), act[0], axes=(0, 0)), 0.0)
        np.save(f"{out_dir}/{head}.map.npy", cam_map.astype(np.float32))
        with open(f"{out_dir}/{head}.class.txt", "w") as f:
            f.write(str(c))


if __name__ == "__main__":
    if sys.argv[1:2] == ["squeezenet"] and len(sys.argv) in (5, 6):
        squeezenet(*sys.argv[2:])
    elif sys.argv[1:2] == ["toys"] and len(sys.argv) == 3:
        toys(sys.argv[2])
    else:
        sys.exit(__doc__)
