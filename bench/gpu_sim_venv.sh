#!/usr/bin/env bash
# A virtual environment that stands in for the GPU machine's python3 (see bench/gpu_image_packages.txt): only
# that machine's Python packages that lion_nb's GPU check touches (bench/gpu_sim_requirements.txt; CPU torch,
# since the local CPU wheel is for Python 3.11 only), none of the wheels the check carries, and beside it those
# wheels downloaded for its Python by bench/gpu_wheels.sh. Cached under a folder keyed by the three lists, so a
# second run only prints the paths. Prints `VENV=...`, `WHEELS=...` and `BUILD_S=...` (0 when cached).
#     bash bench/gpu_sim_venv.sh [ROOT]          (default ROOT: ~/.cache/lion_nb/gpu_sim)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PY=${SIM_PYTHON:-/root/.pyenv/versions/3.11.7/bin/python}
ROOT=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/lion_nb/gpu_sim}
key=$(cat bench/gpu_sim_requirements.txt bench/gpu_wheels.txt bench/gpu_image_packages.txt bench/gpu_sim_venv.sh \
      <("$BASE_PY" -V) | sha256sum | cut -c1-16)
DIR=$ROOT/$key
if [ -f "$DIR/ready" ]; then
    echo "VENV=$DIR/venv"; echo "WHEELS=$DIR/wheels"; echo "BUILD_S=0"; exit 0
fi
t0=$(date +%s.%N)
rm -rf "$DIR.tmp"; mkdir -p "$DIR.tmp"
"$BASE_PY" -m venv "$DIR.tmp/venv"
"$DIR.tmp/venv/bin/python" -m pip install -q -r bench/gpu_sim_requirements.txt
# (-I: the checks read this venv alone, not a checkout's lion_nb.egg-info in the folder they run from)
# pip brought the requirements' own needs; remove those that machine lacks (pydantic comes with typer there
# too, but that machine has none: so does the simulation)
"$DIR.tmp/venv/bin/python" -I - bench/gpu_image_packages.txt > "$DIR.tmp/not_there.txt" <<'PYEOF'
import importlib.metadata as md, re, sys
norm = lambda s: re.sub(r'[-_.]+', '-', s).lower()
image = {norm(l.strip()) for l in open(sys.argv[1]) if l.strip()}
print('\n'.join(sorted({d.metadata['Name'] for d in md.distributions()
                         if norm(d.metadata['Name']) not in image | {'pip', 'setuptools', 'wheel'}})))
PYEOF
if [ -s "$DIR.tmp/not_there.txt" ]; then
    echo "gpu_sim_venv: removing what the GPU machine lacks: $(tr '\n' ' ' < "$DIR.tmp/not_there.txt")" >&2
    "$DIR.tmp/venv/bin/python" -m pip uninstall -q -y -r "$DIR.tmp/not_there.txt"
fi
pyv=$("$DIR.tmp/venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYTHON="$BASE_PY" bash bench/gpu_wheels.sh --python-version "$pyv" --dest "$DIR.tmp/wheels" >&2
# the venv must look like that machine: nothing it lacks, and none of the carried packages installed
"$DIR.tmp/venv/bin/python" -I - bench/gpu_image_packages.txt bench/gpu_wheels.txt <<'PYEOF'
import importlib.metadata as md, re, sys
norm = lambda s: re.sub(r'[-_.]+', '-', s).lower()
image = {norm(l.strip()) for l in open(sys.argv[1]) if l.strip()}
carried = {norm(l.strip().split('==')[0]) for l in open(sys.argv[2]) if l.strip()}
have = {norm(d.metadata['Name']) for d in md.distributions()}
extra = sorted(have - image - {'pip', 'setuptools', 'wheel'})
if extra: sys.exit(f"gpu_sim_venv: installed but not on the GPU machine: {', '.join(extra)}")
print(f"gpu_sim_venv: {len(have)} distributions, all on the GPU machine's list", file=sys.stderr)
needed = sorted(have & carried - image)
if needed: sys.exit(f"gpu_sim_venv: a carried package is preinstalled: {', '.join(needed)}")
PYEOF
touch "$DIR.tmp/ready"
rm -rf "$DIR"; mv "$DIR.tmp" "$DIR"
# the venv's scripts name their folder: re-point them (the interpreter itself is found through pyvenv.cfg)
grep -rlI "$DIR.tmp/venv" "$DIR/venv/bin" | xargs -r sed -i "s#$DIR.tmp/venv#$DIR/venv#g"
echo "VENV=$DIR/venv"; echo "WHEELS=$DIR/wheels"; echo "BUILD_S=$(echo "$(date +%s.%N) - $t0" | bc)"
