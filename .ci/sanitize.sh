#!/usr/bin/env bash
# CI step: build the package with AddressSanitizer + UndefinedBehaviorSanitizer (the C
# libraries and the Cython glue, see DOJO_KERNELS_SANITIZE in setup.py), install it
# NON-editable into a fresh isolated venv, and run the whole test suite against it.
# Fails on any sanitizer report (ASan aborts; UBSan is built with -fno-sanitize-recover,
# and the log is grepped as well) and on any failing test.
#
#   bash .ci/sanitize.sh              # whole suite, reduced hypothesis budget (~10-15 min)
#   bash .ci/sanitize.sh tests/x.py   # a subset (extra arguments go to pytest)
#
# Leak detection is off here (CPython "leaks" by design at exit); tests/test_leaks.py and
# .ci/valgrind.sh check leaks.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
venv="${DOJO_SANITIZE_VENV:-$repo/.ci-venv-sanitize}"
src="$(mktemp -d)"
run="$(mktemp -d)"
log="$(mktemp)"
trap 'rm -rf "$src" "$run" "$log"' EXIT

rm -rf "$venv"
python3 -m venv "$venv"          # NOT --system-site-packages: nothing may shadow the build
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q numpy pytest hypothesis ml_dtypes threadpoolctl

# Build from a copy without build products, so no uninstrumented object is reused.
tar --exclude=./.git --exclude='./build' --exclude='./.ci-venv*' --exclude='*.so' \
    --exclude='*.egg-info' -cf - . | tar -C "$src" -xf -
(cd "$src" && DOJO_KERNELS_SANITIZE=1 python -m pip install -q .)

san_preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
for lib in $san_preload; do
  [ -f "$lib" ] || { echo "sanitize.sh: $lib not found (gcc's sanitizer runtimes)"; exit 1; }
done

# The installed package must be the instrumented one (it links libasan).
ldd "$(python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"/dojo_kernels/_numerics*.so \
  | grep -q libasan || { echo "sanitize.sh: installed extension is not instrumented"; exit 1; }

# Reports go to files ($run/asan.PID, $run/ubsan.PID): pytest captures fd 2 during a test,
# and an aborting process would take a report on stderr down with it.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$run/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$run/ubsan"
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-sanitize}"  # tests/conftest.py: fewer examples
export PYTHONFAULTHANDLER=1

set +e
cd "$run"    # an empty directory: the source tree cannot shadow the installed package
LD_PRELOAD="$san_preload" python -m pytest -q -p no:cacheprovider \
    --rootdir="$repo" -c "$repo/pyproject.toml" "${@:-$repo/tests}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# A report file holding only "failed to allocate" warnings is not a report: the
# MemoryError tests ask for terabytes on purpose (allocator_may_return_null=1).
reports=""
for f in "$run"/asan.* "$run"/ubsan.*; do
  [ -e "$f" ] || continue
  if grep -vqE "WARNING: AddressSanitizer failed to allocate 0x[0-9a-f]+ bytes$" "$f"; then
    reports="$reports $f"
  fi
done
if [ -n "$reports" ] || grep -qE "ERROR: AddressSanitizer|runtime error:" "$log"; then
  for f in $reports; do echo "=== $f"; cat "$f"; done
  echo "sanitize.sh: sanitizer report(s) above"
  exit 1
fi
[ "$rc" -eq 0 ] || { echo "sanitize.sh: pytest exited with $rc"; exit "$rc"; }
echo "sanitize.sh: clean (ASan + UBSan, zero reports)"
