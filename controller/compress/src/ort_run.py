"""Runs an ONNX model with onnxruntime for edgefleet-compress (see measure.rs: OrtRunner).

usage: ort_run.py MODEL WORKDIR
WORKDIR holds spec.json {"inputs": [names], "samples": n, "runs": r, "threads": t,
"disable_quant_qdq": bool, "paired_with": optional model path} and in_{sample}_{input}.npy; this
writes out_{sample}_{output}.npy and result.json {"outputs": count, "latency_ms": median,
"paired_latency_ms": median or null, "version"} or {"error": message}.

With "paired_with" (the fp32 reference), both models are timed alternately, run for run, in this
one process: a close call between a variant and fp32 is then decided on the same machine state,
not on two moments of a shared machine.
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
    paired = None
    if spec.get("paired_with"):
        try:
            paired = ort.InferenceSession(spec["paired_with"], so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            done({"error": f"loading the reference failed: {e}".strip()})
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
        sessions = [sess] if paired is None else [sess, paired]
        for _ in range(2):
            for session in sessions:
                session.run(None, feeds[0])
        times = [[] for _ in sessions]
        for _ in range(int(spec["runs"])):
            for session, timed in zip(sessions, times):
                start = time.perf_counter()
                session.run(None, feeds[0])
                timed.append((time.perf_counter() - start) * 1000.0)
    except Exception as e:  # noqa: BLE001
        done({"error": f"run failed: {e}".strip()})
        return
    done({
        "outputs": count,
        "latency_ms": statistics.median(times[0]),
        "paired_latency_ms": statistics.median(times[1]) if paired is not None else None,
        "version": ort.__version__,
    })


if __name__ == "__main__":
    main()
