#!/usr/bin/env bash
# CI step: one valgrind memcheck run of a small workload (.ci/valgrind_driver.py: every
# kernel, both tiers valgrind can execute, 1 and 2 threads, the error and out-of-memory
# paths), then one helgrind run of the thread pool (.ci/helgrind_driver.py). Fails on any
# memcheck or helgrind error and on any definite leak, after checking that a
# deliberate leak + out-of-bounds read (the driver's --control) IS reported through the
# CPython/NumPy suppressions (.ci/valgrind-python.supp).
#
# valgrind 3.19 cannot execute AVX-512, so the kernels run with DOJO_KERNELS_ISA=avx2 (or
# generic on a CPU without AVX2); the AVX-512 tier is covered by .ci/sanitize.sh.
# PYTHONMALLOC=malloc: every Python allocation goes through malloc, so memcheck sees it.
#
# Uses the CI venv ($DOJO_CI_VENV or .ci-venv, as .ci/run makes it) when it has the
# package, else builds one in .ci-venv-valgrind. About 1 minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed"; exit 1; }

run="$(mktemp -d)"
trap 'rm -rf "$run"' EXIT
venv="${DOJO_CI_VENV:-$repo/.ci-venv}"
if ! (cd "$run" && "$venv/bin/python" -c "import dojo_kernels, ml_dtypes") 2>/dev/null; then
  venv="$repo/.ci-venv-valgrind"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q numpy ml_dtypes
  "$venv/bin/python" -m pip install -q "$repo"
fi
py="$venv/bin/python"
cd "$run"   # outside the repo: the source tree cannot shadow the installed package

tier=$("$py" -c "from dojo_kernels import _cpu; print('avx2' if _cpu.best_isa() >= 1 else 'generic')")
export DOJO_KERNELS_ISA="$tier" PYTHONMALLOC=malloc
vg=(valgrind --suppressions="$repo/.ci/valgrind-python.supp" --error-exitcode=1
    --errors-for-leak-kinds=definite --leak-check=full --show-leak-kinds=definite
    --num-callers=40)

echo "=== valgrind: positive control (must be reported) ==="
if "${vg[@]}" "$py" "$repo/.ci/valgrind_driver.py" --control >"$run/control.log" 2>&1; then
  cat "$run/control.log"; echo "valgrind.sh: the control's leak/overread went unreported"; exit 1
fi
grep -q "Invalid read" "$run/control.log" && grep -q "definitely lost in" "$run/control.log" \
  || { cat "$run/control.log"; echo "valgrind.sh: control not reported as expected"; exit 1; }

echo "=== valgrind memcheck: .ci/valgrind_driver.py on tier $tier ==="
set +e
"${vg[@]}" "$py" "$repo/.ci/valgrind_driver.py" "$@" >"$run/vg.log" 2>&1
rc=$?
set -e
grep -E "valgrind driver|ERROR SUMMARY|definitely lost:|Invalid|uninitialised|lost in" "$run/vg.log" || true
if [ "$rc" -ne 0 ]; then cat "$run/vg.log"; echo "valgrind.sh: memcheck failed ($rc)"; exit 1; fi

# The GEMM's packed-B flags are C11 atomics, which helgrind does not model: csrc/gemm_driver.c
# annotates them through <valgrind/helgrind.h> when the build finds that header.
if [ -f /usr/include/valgrind/helgrind.h ]; then
  echo "=== valgrind helgrind: .ci/helgrind_driver.py (the thread pool) on tier $tier ==="
  set +e
  valgrind --tool=helgrind --error-exitcode=1 --num-callers=30 "$py" "$repo/.ci/helgrind_driver.py" \
      >"$run/hg.log" 2>&1
  rc=$?
  set -e
  grep -E "ERROR SUMMARY|Possible data race|lock order" "$run/hg.log" || true
  if [ "$rc" -ne 0 ]; then cat "$run/hg.log"; echo "valgrind.sh: helgrind failed ($rc)"; exit 1; fi
else
  echo "valgrind.sh: no <valgrind/helgrind.h>: the helgrind run is skipped"
fi
echo "valgrind.sh: clean"
