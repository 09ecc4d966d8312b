"""Static int8 quantization with onnxruntime's own tool, for edgefleet-compress (calibrated.rs).

usage: ort_quantize.py MODEL WORKDIR
WORKDIR holds spec.json {"inputs": [names], "samples": n} and cal_{sample}_{input}.npy; this writes
WORKDIR/quantized.onnx and result.json {"version", "operators": {op: count}} or {"error"}.

QOperator format (QLinearConv and friends: what ONNX Runtime's CPU provider runs on integer
kernels, also with session.disable_quant_qdq=1, which the agent sets), per-channel int8 weights,
uint8 activations with min/max ranges from the calibration inputs, and reduce_range: 7-bit
weights, so the u8 x s8 products of CPUs without VNNI (vpmaddubsw) cannot saturate.
"""

import json
import os
import sys
from collections import Counter

import numpy as np


def main():
    model, workdir = sys.argv[1], sys.argv[2]
    out = os.path.join(workdir, "quantized.onnx")
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)

    def done(result):
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump(result, f)

    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        done({"error": f"onnxruntime's quantization tool is missing: {e}"})
        return

    names = spec["inputs"]
    feeds = [
        {n: np.load(os.path.join(workdir, f"cal_{s}_{k}.npy")) for k, n in enumerate(names)}
        for s in range(int(spec["samples"]))
    ]

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    # Folds BatchNormalization into Conv and infers shapes first, as onnxruntime recommends:
    # unfolded, every BatchNormalization would run in float between two (de)quantizations.
    pre = os.path.join(workdir, "pre.onnx")
    try:
        quant_pre_process(model, pre, skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - reported to the caller
        done({"error": f"pre-processing failed: {e}".strip()})
        return
    try:
        quantize_static(
            pre,
            out,
            Feeds(),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    except Exception as e:  # noqa: BLE001
        done({"error": f"quantize_static failed: {e}".strip()})
        return
    operators = Counter(n.op_type for n in onnx.load(out).graph.node)
    done({"version": ort.__version__, "operators": dict(operators)})


if __name__ == "__main__":
    main()
