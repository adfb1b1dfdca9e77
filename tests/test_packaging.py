"""Requirements are declared once, in settings.ini: setup.py's extras and the Makefile's installs are read from it."""
import importlib.metadata, re, runpy, subprocess, sys
from configparser import ConfigParser
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
REQS = [sys.executable, str(ROOT/'tools'/'requirements.py')]

def settings() -> dict:
    cfg = ConfigParser(delimiters=['='], interpolation=None); cfg.read(ROOT/'settings.ini', encoding='utf-8')
    return {k: v.split() for k, v in cfg['DEFAULT'].items() if k == 'requirements' or k.endswith('_requirements')}

def test_setup_py_makes_an_extra_of_every_requirements_key_but_the_models(monkeypatch):
    "install_requires is `requirements`; each other `<name>_requirements` key is the extra <name>, but the --no-deps models."
    got = {}
    monkeypatch.chdir(ROOT)                                     # setup.py reads settings.ini and README.md from here
    with mock.patch('setuptools.setup', side_effect=lambda **kw: got.update(kw)): runpy.run_path(str(ROOT/'setup.py'))
    s = settings()
    assert got['install_requires'] == s['requirements']
    assert got['extras_require'] == {k[:-len('_requirements')]: v for k, v in s.items() if k not in ('requirements', 'models_requirements')}
    assert set(got['extras_require']) == {'dev', 'lora', 'server', 'gpu'} and 'pytest-xdist' in got['extras_require']['dev']

def test_requirements_tool_prints_the_pins_the_makefile_installs():
    "`make setup` installs `requirements torch` first and `models_requirements` with --no-deps: here, those versions."
    make = (ROOT/'Makefile').read_text()
    assert '$(REQS) requirements torch' in make and '--no-deps $$models' in make and 'models=$$($(REQS) models_requirements)' in make
    torch = subprocess.run([*REQS, 'requirements', 'torch'], capture_output=True, text=True, check=True).stdout.split()
    assert len(torch) == 1 and re.fullmatch(r'torch==[\d.]+', torch[0])
    assert importlib.metadata.version('torch').split('+')[0] == torch[0].split('==')[1]      # the pin is what is installed
    out = subprocess.run([*REQS, 'models_requirements'], capture_output=True, text=True, check=True).stdout.split()
    assert out == settings()['models_requirements'] and not any(r.startswith('#') for r in out)   # comments left out
    for args, msg in ((['no_such_requirements'], "no key 'no_such_requirements'"), (['requirements', 'nosuchpkg'], "does not list 'nosuchpkg'")):
        r = subprocess.run([*REQS, *args], capture_output=True, text=True)
        assert r.returncode == 2 and r.stdout == '' and msg in r.stderr, (r.returncode, r.stdout, r.stderr)
