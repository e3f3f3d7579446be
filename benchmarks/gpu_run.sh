#!/usr/bin/env bash
# Run the test suite's GPU-capable part and the core benchmarks on a lent GPU machine (no network there).
#
#   bash benchmarks/gpu_run.sh probe|tests|bench|tracin|all
#
# Run from the repository root, or from a snapshot of the last commit so that uncommitted edits in a shared working
# tree do not travel into the run (the device call carries ".whl" and ".gpu_tree"):
#
#   echo /.gpu_tree/ >> .git/info/exclude; rm -rf .gpu_tree; mkdir .gpu_tree
#   git archive HEAD core data dashboard tests benchmarks pyproject.toml | tar -x -C .gpu_tree
#   ln -s ../assets .gpu_tree/assets; git rev-parse --short HEAD > .gpu_tree/COMMIT
#   # on the device: cd .gpu_tree && WHL=../.whl WORKERS=12 bash benchmarks/gpu_run.sh tests   (~1 min on 16 cores)
#   #                cd .gpu_tree && WHL=../.whl bash benchmarks/gpu_run.sh bench                (~3.5 min)
#
# Packages the machine lacks travel as wheels in the git-ignored folder .whl
# (carried with the call); fetch them here first (Python 3.12, manylinux x86-64, one version each):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl zennit captum zarr numcodecs donfig google-crc32c dask distributed \
#     partd locket tblib zict tornado h5netcdf cftime
#
# (netCDF4 is left out to keep the tree + wheels under the 64 MiB that travel: xarray then reads and writes
# NETCDF4 files through h5netcdf/h5py and NETCDF3 through scipy.) xaiscope itself is not built: its folders are
# linked into /tmp/site/xaiscope (what the editable install's package-dir mapping does), so the run uses the
# working tree as it is. Output goes to $OUT (pytest.log, bench_*.log), or to ./gpu_out when OUT is unset.
set -u
MODE=${1:-all}
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
WHL=${WHL:-.whl}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PY:-python3}

install() {
    mkdir -p "$SITE"
    if [ -z "${NO_WHEELS:-}" ] && ls "$WHL"/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl \
            || { echo "wheel install failed"; exit 1; }
    fi
    mkdir -p "$SITE/xaiscope"
    for d in core data dashboard assets; do ln -sfn "$PWD/$d" "$SITE/xaiscope/$d"; done
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    $PY - <<'EOF' || exit 1
import importlib, platform, torch
mods = ["xaiscope.core." + m for m in ("states", "engine", "hydro", "influence", "relevance", "convlstm", "lim",
        "sst_qoi", "train", "train_enso", "cli", "interop_nh", "export", "analysis", "agreement", "influence_eval")]
mods += ["xaiscope.data." + m for m in ("camels", "sst", "synthetic", "windows", "sensitivity")]
mods += ["zennit", "captum.attr", "zarr", "distributed", "h5netcdf"]
from xaiscope.core.relevance import ensure_torchvision_importable
ensure_torchvision_importable()
for m in mods:
    importlib.import_module(m)
print("imports ok;", "python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
}

# Test files that need neither Panel/Bokeh nor a browser (the dashboard's own tests are left out).
TEST_FILES="tests/test_agreement.py tests/test_analysis.py tests/test_camels.py tests/test_checkpoint.py
 tests/test_checkpoint_safety.py tests/test_cli_hydro.py tests/test_convlstm.py tests/test_demo_checkpoints.py
 tests/test_engine.py tests/test_export.py tests/test_fuzz_readers.py tests/test_influence.py
 tests/test_influence_eval.py tests/test_interop_nh.py tests/test_lim.py tests/test_metrics.py tests/test_paths.py
 tests/test_relevance.py tests/test_sensitivity.py tests/test_sst.py tests/test_sst_qoi.py tests/test_states.py
 tests/test_synthetic.py tests/test_train.py tests/test_train_enso.py tests/test_windows.py"
# test_engine.py tests that open the dashboard's AppState / compute / about card / app (Panel)
DESELECT="--deselect tests/test_engine.py::test_two_sessions_share_one_model_copy
 --deselect tests/test_engine.py::test_cell_state_view_computes_through_the_engine
 --deselect tests/test_engine.py::test_about_lists_settings_models_cache_and_notes
 --deselect tests/test_engine.py::test_about_card_fills_in_when_opened
 --deselect tests/test_engine.py::test_app_sidebar_has_the_about_card"

probe() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/probe.log"
    $PY -m pip list 2>/dev/null | grep -iE "^(numpy|pandas|xarray|scipy|h5py|hypothesis|pytest|pytest-xdist|pytest-timeout|setuptools|torch|torchvision|safetensors|pyyaml|fsspec|matplotlib|pillow|tqdm|threadpoolctl) " \
        | tee -a "$OUT/probe.log"
    # shellcheck disable=SC2086
    $PY -m pytest -p no:cacheprovider -q --collect-only $TEST_FILES $DESELECT 2>&1 | tail -5 | tee -a "$OUT/probe.log"
    # shellcheck disable=SC2086
    $PY -m pytest -p no:cacheprovider -q -rs tests/test_states.py 2>&1 | tail -15 | tee -a "$OUT/probe.log"
}

tests() {
    # -n: pytest-xdist on the machine's cores; every GPU test still runs (one GPU, shared by the workers)
    # shellcheck disable=SC2086
    $PY -m pytest -p no:cacheprovider -q -rfEs -n "${WORKERS:-8}" --timeout 600 -m "not browser" \
        $TEST_FILES $DESELECT 2>&1 | tee "$OUT/pytest.log"
}

# Each benchmark on the GPU and, for a same-machine baseline, on this machine's CPU (same flags otherwise).
tracin() {
    local dev=${BENCH_DEVICE:-cuda}
    { $PY benchmarks/tracin.py --device "$dev" --captum-devices "cpu,$dev" --windows "${TRACIN_WINDOWS:-20000}" \
        --captum-windows 2000; } 2>&1 | tee "$OUT/bench_tracin.log"
}

bench() {
    local dev=${BENCH_DEVICE:-cuda}
    { $PY benchmarks/states.py --device "$dev"; echo; $PY benchmarks/states.py --device cpu --threads 2; } 2>&1 \
        | tee "$OUT/bench_states.log"
    { $PY benchmarks/engine.py --device "$dev"; echo; $PY benchmarks/engine.py --device cpu; } 2>&1 \
        | tee "$OUT/bench_engine.log"
    { for n in 256 16384; do $PY benchmarks/relevance.py --device "$dev" --n $n; echo
      $PY benchmarks/relevance.py --device cpu --n $n; echo; done; } 2>&1 | tee "$OUT/bench_relevance.log"
}

install
case "$MODE" in
    probe) probe ;;
    tests) tests ;;
    tracin) tracin ;;
    bench) bench ;;
    all) tests; bench; tracin ;;
    *) echo "usage: $0 probe|tests|bench|tracin|all"; exit 2 ;;
esac
