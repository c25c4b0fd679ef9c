#!/usr/bin/env bash
# Build the Sphinx API reference (docs/) with warnings as errors. Installs the docs extra
# (sphinx, myst-parser) and the package itself into the ACTIVE venv; the build goes to a
# temporary directory (set DOCS_OUT=dir to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q ".[docs]"
root=$PWD
out="${DOCS_OUT:-$(mktemp -d)}"
# from a neutral directory so that the installed package (with its compiled modules) is used
(cd /tmp && sphinx-build -W --keep-going -q -b html "$root/docs" "$out")
echo "docs: built without warnings into $out"
