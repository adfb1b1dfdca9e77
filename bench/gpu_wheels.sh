#!/usr/bin/env bash
# Download the wheels that bench/gpu_check.sh carries to the GPU machine (no network there): exactly the
# name==version lines of bench/gpu_wheels.txt, each without its dependencies (the list names them all), as
# binary wheels for CPython on manylinux x86_64, into an ignored folder that the device run names in `carry`.
# Then check that the folder and the working tree that travels with it fit the 64 MiB a device call takes.
#     bash bench/gpu_wheels.sh                               # Python 3.12 (the GPU machine) into .whl/
#     bash bench/gpu_wheels.sh --python-version 3.11 --dest DIR   # the same list for the simulated machine
# Exit codes: 0 done; 3 a wheel could not be downloaded; 4 the tree and the wheels exceed 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.12; DEST=.whl; PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYV=$2; shift 2;;
        --dest) DEST=$2; shift 2;;
        *) echo "usage: $0 [--python-version 3.12] [--dest .whl]" >&2; exit 2;;
    esac
done
mkdir -p "$DEST"
PLATS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
       --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
while read -r req; do
    [ -z "$req" ] && continue
    name=${req%%==*}
    norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
    if ls "$DEST" | tr 'A-Z-' 'a-z_' | grep -q "^${norm}-${req##*==}-"; then continue; fi   # already here
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
        "${PLATS[@]}" -d "$DEST" "$req" || { echo "gpu_wheels: could not download $req for Python $PYV" >&2; exit 3; }
done < bench/gpu_wheels.txt
# one version of each name (two stop the whole --no-index install), and each listed name present
"$PY" - "$DEST" bench/gpu_wheels.txt <<'PYEOF'
import re, sys
from pathlib import Path
dest, listed = Path(sys.argv[1]), [l.strip() for l in open(sys.argv[2]) if l.strip()]
norm = lambda s: re.sub(r'[-_.]+', '_', s).lower()
want = {norm(l.split('==')[0]): l.split('==')[1] for l in listed}
have = {}
for w in sorted(dest.glob('*.whl')):
    name, ver = w.name.split('-')[:2]
    if norm(name) in want and ver != want[norm(name)]: w.unlink(); continue   # an older pin's leftover
    have.setdefault(norm(name), []).append(w.name)
missing = [f"{n}=={v}" for n, v in want.items() if n not in have]
extra = [w for n, ws in have.items() if n not in want for w in ws]
if missing: sys.exit(f"gpu_wheels: missing after download: {', '.join(missing)}")
if extra: print(f"gpu_wheels: note: {dest} also holds wheels not in the list: {', '.join(extra)}")
PYEOF
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | grep total$ | awk '{s+=$1} END {print s+0}')
limit=$((64 * 1024 * 1024))
printf 'gpu_wheels: %d wheels, %.1f MiB; working tree %.1f MiB; together %.1f of 64 MiB\n' \
    "$(ls "$DEST"/*.whl | wc -l)" "$(echo "$wheels/1048576" | bc -l)" "$(echo "$tree/1048576" | bc -l)" \
    "$(echo "($wheels+$tree)/1048576" | bc -l)"
[ $((wheels + tree)) -le $limit ] || { echo "gpu_wheels: over the 64 MiB a device call carries" >&2; exit 4; }
