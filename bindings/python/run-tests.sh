#!/usr/bin/env bash
# Runs the Python bindings' tests (pytest) against the library bindings/generate.sh put in
# bindings/python/lamina. Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")"
python3 -c "import pytest" 2>/dev/null || python3 -m pip install -q pytest
LAMINA_CLI=${LAMINA_CLI:-$(cd ../.. && pwd)/target/release/lamina} python3 -m pytest -q tests
