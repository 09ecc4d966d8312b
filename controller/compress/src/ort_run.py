"""Runs an ONNX model with onnxruntime for edgefleet-compress (see measure.rs: OrtRunner).

usage: ort_run.py MODEL WORKDIR
WORKDIR holds spec.json {"inputs": [names], "samples": n, "runs": r, "threads": t,
"disable_quant_qdq": bool} and in_{sample}_{input}.npy; this writes out_{sample}_{output}.npy and
result.json {"outputs": count, "latency_ms": median, "version"} or {"error": message}.
"""

import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, workdir = sys.argv[1], sys.argv[2]
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)
    result_path = os.path.join(workdir, "result.json")

    def done(result):
        with open(result_path, "w") as f:
            json.dump(result, f)

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(spec["threads"])
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if spec.get("disable_quant_qdq"):
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - reported to the caller
        done({"error": f"load failed: {e}".strip()})
        return
    names = spec["inputs"]
    feeds = []
    for s in range(int(spec["samples"])):
        feeds.append(
            {n: np.load(os.path.join(workdir, f"in_{s}_{k}.npy")) for k, n in enumerate(names)}
        )
    try:
        count = 0
        for s, feed in enumerate(feeds):
            outs = sess.run(None, feed)
            count = len(outs)
            for k, o in enumerate(outs):
                np.save(os.path.join(workdir, f"out_{s}_{k}.npy"), np.ascontiguousarray(o))
        for _ in range(2):
            sess.run(None, feeds[0])
        times = []
        for _ in range(int(spec["runs"])):
            start = time.perf_counter()
            sess.run(None, feeds[0])
            times.append((time.perf_counter() - start) * 1000.0)
    except Exception as e:  # noqa: BLE001
        done({"error": f"run failed: {e}".strip()})
        return
    done({"outputs": count, "latency_ms": statistics.median(times), "version": ort.__version__})


if __name__ == "__main__":
    main()
