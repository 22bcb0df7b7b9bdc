#!/bin/sh
# Builds the DiLoCo golden-vector generator offline and rewrites
# tests/golden/diloco/vectors.json. See README.md beside this script.
#
#   MIRROR        bare git mirror of aberration-technology/burn_p2p
#                 (default /work/.mirror/aberration-technology+burn_p2p/repo)
#   UPSTREAM_REV  revision of the mirror to compile (default HEAD)
#   OUTPUT        where to write (default tests/golden/diloco/vectors.json)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
MIRROR=${MIRROR:-/work/.mirror/aberration-technology+burn_p2p/repo}
rev=${UPSTREAM_REV:-HEAD}
OUTPUT=${OUTPUT:-$root/tests/golden/diloco/vectors.json}
if [ ! -d "$MIRROR" ]; then
    echo "generate.sh: no burn_p2p mirror at $MIRROR (set MIRROR)" >&2
    exit 2
fi
UPSTREAM_REV=$(git -C "$MIRROR" rev-parse --verify "$rev^{commit}")
export MIRROR UPSTREAM_REV
echo "generate.sh: upstream aberration-technology/burn_p2p at $UPSTREAM_REV" >&2
cd "$here"
cargo build --offline --release
mkdir -p "$(dirname "$OUTPUT")"
./target/release/diloco_golden "$OUTPUT"
