"""Fail when `lion_nb/` or README.md is out of date with `nbs/`, or when a notebook is not clean.

Works on a copy, so it never changes the checkout: it exports and cleans the copy and
compares the results with what is here.
"""
import filecmp, shutil, subprocess, sys, tempfile
from pathlib import Path

root = Path(__file__).resolve().parents[1]
bin_dir = Path(sys.executable).parent

def copy_project(dst: Path):
    for name in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(root/name, dst/name)
    shutil.copytree(root/'nbs', dst/'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints'))
    shutil.copytree(root/'lion_nb', dst/'lion_nb', ignore=shutil.ignore_patterns('__pycache__'))

def differing(a: Path, b: Path, pattern: str):
    "Relative paths of files matching `pattern` that differ between trees `a` and `b`, either side."
    names = {p.relative_to(a) for p in a.rglob(pattern)} | {p.relative_to(b) for p in b.rglob(pattern)}
    return sorted(str(n) for n in names if '.ipynb_checkpoints' not in str(n) and '__pycache__' not in str(n)
                  and not ((a/n).exists() and (b/n).exists() and filecmp.cmp(a/n, b/n, shallow=False)))

def main():
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp); copy_project(tmp)
        subprocess.run([bin_dir/'nbdev_export'], cwd=tmp, check=True)
        stale = differing(root/'lion_nb', tmp/'lion_nb', '*.py')
        if stale: problems.append(f"lion_nb/ is out of date with nbs/ (run nbdev_export): {', '.join(stale)}")
        subprocess.run([bin_dir/'nbdev_clean'], cwd=tmp, check=True)
        dirty = differing(root/'nbs', tmp/'nbs', '*.ipynb')
        if dirty: problems.append(f"notebooks are not clean (run nbdev_clean): {', '.join(dirty)}")
    readme = subprocess.run([sys.executable, root/'tools'/'readme.py', '--check'])
    if readme.returncode: problems.append("README.md is out of date with nbs/index.ipynb (run python tools/readme.py)")
    for p in problems: print(f"check_nbdev: {p}", file=sys.stderr)
    if not problems: print("check_nbdev: lion_nb/ matches nbs/, and every notebook is clean")
    sys.exit(1 if problems else 0)

if __name__ == '__main__': main()
