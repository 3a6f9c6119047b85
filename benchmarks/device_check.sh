#!/usr/bin/env bash
# igdm-kit on a GPU, checked and timed in one command (issue 16); under 8 minutes on a CUDA machine.
#
#   bash benchmarks/device_check.sh OUT_DIR              # OUT_DIR defaults to $OUT
#   bash benchmarks/device_check.sh OUT_DIR --dry-run    # the same code path on a CPU, tiny sizes
#
# Writes OUT_DIR/device_check.json, summary.txt and logs.txt; all options: --help.
# PYTHON=... picks the interpreter (default: python3, else python) that has torch and igdm-kit.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -z "$py" ]; then
  echo "error: no python3 or python on PATH" >&2
  echo "hint: set PYTHON=/path/to/python (the one with torch and igdm-kit installed)" >&2
  exit 2
fi
exec "$py" "$here/device_check.py" "$@"
