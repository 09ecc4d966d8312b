#!/usr/bin/env python3
"""Reference outputs for the node-agent's real-model tests, computed with the PyPI onnxruntime
(an implementation independent of tract).

For each model in the cache directory this writes `<model>.reference.json`:

    {"model": "orientation.onnx", "sha256": ..., "sizeBytes": ..., "onnxruntime": "1.23.2",
     "cases": [{"inputs": [{"name", "shape", "datatype": "FP32",
                            "generator": {"a", "b", "scale"}}],
                "outputs": [{"name", "shape", "data": [...]}]}]}

Inputs are generated, not stored: element i (row-major) of an input is
    float32(scale * sin(a * i + b))
computed in float64 and then rounded to float32, which the Rust tests reproduce exactly.

Usage: reference_outputs.py [MODELS_DIR]   (default ${EDGEFLEET_MODELS:-~/.cache/edgefleet/models})
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort

# model file -> list of cases; each case maps input name -> (shape, a, b, scale)
CASES = {
    "orientation.onnx": [
        {"x": ([1, 3, 224, 224], 0.37, 0.0, 1.0)},
        {"x": ([1, 3, 224, 224], 0.011, 1.3, 2.0)},
    ],
    "ocr-cls.onnx": [
        {"x": ([1, 3, 48, 192], 0.37, 0.0, 1.0)},
        {"x": ([1, 3, 48, 192], 0.003, 0.5, 0.8)},
    ],
    "silero-vad.onnx": [
        {"input": ([1, 576], 0.05, 0.0, 0.5), "state": ([2, 1, 128], 0.0, 0.0, 0.0)},
        {"input": ([1, 576], 0.9, 0.2, 0.3), "state": ([2, 1, 128], 0.13, 0.4, 0.2)},
    ],
}


def generate(shape, a, b, scale):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    return (scale * np.sin(a * i + b)).astype(np.float32).reshape(shape)


def main():
    default = os.environ.get("EDGEFLEET_MODELS", os.path.expanduser("~/.cache/edgefleet/models"))
    models_dir = sys.argv[1] if len(sys.argv) > 1 else default
    for model, cases in CASES.items():
        path = os.path.join(models_dir, model)
        if not os.path.exists(path):
            sys.exit(f"reference_outputs: {path} is missing; run tests/tools/fetch-models.sh")
        with open(path, "rb") as f:
            blob = f.read()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        out_names = [o.name for o in session.get_outputs()]
        doc = {
            "model": model,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "sizeBytes": len(blob),
            "onnxruntime": ort.__version__,
            "formula": "float32(scale * sin(a * i + b)), i = row-major element index",
            "cases": [],
        }
        for case in cases:
            feeds, inputs = {}, []
            for name, (shape, a, b, scale) in case.items():
                feeds[name] = generate(shape, a, b, scale)
                inputs.append({"name": name, "shape": shape, "datatype": "FP32",
                               "generator": {"a": a, "b": b, "scale": scale}})
            results = session.run(out_names, feeds)
            outputs = [{"name": n, "shape": list(r.shape), "data": [float(v) for v in r.ravel()]}
                       for n, r in zip(out_names, results)]
            doc["cases"].append({"inputs": inputs, "outputs": outputs})
        out = path + ".reference.json"
        with open(out + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(out + ".tmp", out)
        print(f"reference_outputs: wrote {out}")


if __name__ == "__main__":
    main()
