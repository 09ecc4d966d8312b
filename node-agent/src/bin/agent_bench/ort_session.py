"""ONNX Runtime's own Python session on the input agent-bench sends the agent (agent-bench
--compare-runtimes): same model, same bytes, same intra-op threads and session options.

usage: ort_session.py MODEL SPEC.json   (SPEC: threads, iterations, inputs [{name, dtype, shape, file}])
prints {"p50_ms": median, "p99_ms": ..., "version": ...}
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(spec["threads"])
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # As the agent's session (node-agent/src/runtime/ort.rs).
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = {
        i["name"]: np.fromfile(i["file"], dtype=i["dtype"]).reshape(i["shape"])
        for i in spec["inputs"]
    }
    for _ in range(50):
        sess.run(None, feeds)
    samples = []
    for _ in range(int(spec["iterations"])):
        start = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    at = lambda q: samples[min(len(samples) - 1, round((len(samples) - 1) * q))]
    print(json.dumps({"p50_ms": at(0.5), "p99_ms": at(0.99), "version": ort.__version__}))


if __name__ == "__main__":
    main()
