#!/usr/bin/env bash
# Static typing: mypy --strict on the package (config: [tool.mypy] in pyproject.toml), then
# stubtest: the .pyi stubs of the compiled modules against the built extensions. Installs
# mypy into the ACTIVE venv; expects dojo_kernels installed there (pip install .).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pip install -q "mypy>=1.8"
mypy --strict -p dojo_kernels
# stubtest imports the compiled modules: run it outside the source tree
mods=$(cd "$root/dojo_kernels" && ls _*.pyx | sed 's/\.pyx$//; s/^/dojo_kernels./')
for m in $mods; do
    [ -f "$root/dojo_kernels/${m#dojo_kernels.}.pyi" ] || { echo "typecheck: no stub for $m"; exit 1; }
done
(cd /tmp && python -m mypy.stubtest $mods)
echo "typecheck: mypy --strict and stubtest clean"
