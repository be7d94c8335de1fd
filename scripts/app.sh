#!/usr/bin/env bash
# Install opd-lab (CPU torch) and start the web app on the built-in lab (built on first start).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -c constraints-cpu.txt -e .
exec opd-lab app "$@"
