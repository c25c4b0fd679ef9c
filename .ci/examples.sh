#!/usr/bin/env bash
# Run every script in examples/ and every ```python block of README.md against the installed
# package (in the active venv). The MPI example runs under `mpiexec -n 4` (and with one
# plain rank) when mpi4py is importable; it is skipped, with a message, when not.
# Fails on the first script that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"   # never import the package from the source tree

for f in format_study gemm_with_plan allreduce_sweep; do
    echo "=== examples/$f.py ==="
    python "$root/examples/$f.py"
done

echo "=== examples/mpi_allreduce.py ==="
if python -c "import mpi4py" 2>/dev/null; then
    python "$root/examples/mpi_allreduce.py"
    if command -v mpiexec >/dev/null; then
        timeout 300 mpiexec -n 4 python "$root/examples/mpi_allreduce.py"
    else
        echo "mpiexec not found: the 4-rank run is skipped"
    fi
else
    echo "mpi4py not installed (pip install '.[mpi]'): skipped"
fi

echo "=== README.md python blocks ==="
python - "$root/README.md" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"```python\n(.*?)```", text, re.S)
ran = 0
for i, block in enumerate(blocks):
    if "mpi4py" in block:  # needs mpiexec; examples/mpi_allreduce.py covers it
        continue
    exec(compile(block, f"README.md python block {i}", "exec"), {"__name__": "__readme__"})
    ran += 1
print(f"README.md: {ran} python blocks ran")
if ran == 0:
    sys.exit("README.md: no python block found")
PY
echo "examples: all passed"
