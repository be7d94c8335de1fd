#!/usr/bin/env bash
# Install opd-lab with its test extras (CPU torch) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -c constraints-cpu.txt -e ".[test]"
python3 -m pytest -q "$@"
