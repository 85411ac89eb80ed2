#!/bin/sh
# Rebuilds DejaVuSans-subset.ttf, the font `gaplab report` draws PNG text with and measures
# token boxes by: DejaVu Sans cut to Latin, Greek, punctuation, arrows and the few symbols the
# figures use, so that the binary carries ~55 KB instead of ~750 KB.
# Needs fonttools (pip install fonttools) and DejaVu Sans (Debian: fonts-dejavu-core).
set -eu
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
here=$(dirname "$0")
pyftsubset "$src" \
  --unicodes="U+0020-007E,U+00A0-017F,U+0370-03FF,U+2010-2027,U+2030-203A,U+2190-2193,U+21B5,U+2202,U+2205,U+2206,U+2211,U+2212,U+221A,U+221E,U+2248,U+2260,U+2264,U+2265,U+2423,U+2581,U+25A0,U+25B2,U+25BC,U+25CF,U+FFFD" \
  --no-hinting --layout-features='kern' \
  --output-file="$here/DejaVuSans-subset.ttf"
