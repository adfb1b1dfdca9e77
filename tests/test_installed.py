"""An installed lion_nb runs the loop: this checkout's wheel, in a fresh virtual environment, from an empty
folder.

The fresh environment gets the project's dependencies from the environment running the tests: a .pth file
lists its site-packages (a path line does not process that folder's own .pth files, so the checkout's
editable lion_nb is not picked up), and $JUPYTER_PATH names its Jupyter data folders (nbconvert's templates,
the python3 kernel spec), which a real install of the dependencies would have put in the fresh prefix.
"""
import os, shutil, subprocess, sys, sysconfig
from pathlib import Path

import nbformat
import pytest
from jupyter_core.paths import jupyter_path

from lion_nb.core import RunDir, read_json
from lion_nb.algorithm import STAGE_NOTEBOOKS
from lion_nb.loop import lab_notebook
from lion_nb.testing import serve
from lion_fixtures import ROOT, lion_reply, tiny_config, tiny_student

BUILD_INPUTS = ('setup.py', 'settings.ini', 'pyproject.toml', 'README.md', 'MANIFEST.in', 'lion_nb', 'nbs',
                'data/demo', 'configs')
IGNORED = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints', '*.egg-info')

def sh(*cmd, **kw) -> str:
    "Run `cmd` (failing with its output), return its stdout."
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-3000:]}{p.stderr[-3000:]}"
    return p.stdout

def build_wheel(dst: Path) -> Path:
    "This checkout's wheel, built offline from a copy of its build inputs (no build/ or egg-info left here)."
    src = dst/'src'
    for name in BUILD_INPUTS:
        if (ROOT/name).is_dir(): shutil.copytree(ROOT/name, src/name, ignore=IGNORED)
        else: (src/name).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/name, src/name)
    sh(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q', '-w',
       dst/'dist', '.', cwd=src)
    wheel, = (dst/'dist').glob('lion_nb-*.whl')
    return wheel

def fresh_venv(folder: Path, wheel: Path) -> Path:
    "A new virtual environment with `wheel` installed (--no-deps), seeing the dependencies of this one."
    sh(sys.executable, '-m', 'venv', '--without-pip', folder)
    py = folder/'bin'/'python'
    site = Path(sh(py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))').strip())
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ('purelib', 'platlib'))
    (site/'lion_deps.pth').write_text(''.join(f'{p}\n' for p in ours))
    sh(sys.executable, '-m', 'pip', '--python', py, 'install', '--no-deps', '--no-index', '-q', wheel)
    return folder

@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> Path:
    "The fresh virtual environment holding the installed wheel."
    tmp = tmp_path_factory.mktemp('installed')
    return fresh_venv(tmp/'venv', build_wheel(tmp))

def clean_env(venv: Path) -> dict:
    "This environment without the checkout (no PYTHONPATH, no $LION_NBS_DIR), the fresh venv's bin first."
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'LION_NBS_DIR')}
    return {**env, 'JUPYTER_PATH': os.pathsep.join(jupyter_path()), 'VIRTUAL_ENV': str(venv),
            'PATH': f"{venv/'bin'}{os.pathsep}{env.get('PATH', '')}"}

def without_parameters(nb) -> list[tuple]:
    "A notebook's cells (type, source), without the cell papermill injects."
    return [(c.cell_type, c.source) for c in nb.cells
            if 'injected-parameters' not in c.metadata.get('tags', [])]

@pytest.mark.slow   # 90 s on 2 busy cores (wheel and venv 6 s, a 6-stage stand-in run 83 s): make test-slow
def test_an_installed_package_runs_the_loop_from_an_empty_folder(installed, tmp_path):
    py, env = installed/'bin'/'python', clean_env(installed)
    here = tmp_path/'empty'; here.mkdir()
    probe = ("import lion_nb; from jupyter_client.manager import KernelManager; print(lion_nb.__file__); "
             "print(KernelManager(kernel_name='python3').format_kernel_cmd()[0])")
    module, kernel = sh(py, '-c', probe, cwd=here, env=env).split()
    assert Path(module).is_relative_to(installed), module          # the wheel's lion_nb, not the checkout's
    assert kernel == str(py), kernel                                # and the stage kernels run its python
    with serve(reply=lion_reply) as srv:
        cfg = tiny_config(tmp_path/'tiny.yaml', srv.base_url, tiny_student(tmp_path/'student'),
                          loop={'evaluate': 'final'})
        p = subprocess.run([installed/'bin'/'lion_nb', 'run', '--config', cfg], cwd=here, env=env,
                           capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    run = RunDir(here/'outputs'/'tiny')                             # no --run-dir: outputs/<name>, here
    m = read_json(run.manifest)
    assert set(m['stages']) == {'iter_1/pools', 'iter_1/imitation', 'iter_1/discrimination',
                                'iter_1/generation', 'iter_2/imitation', 'iter_2/evaluation'}
    assert m['config_hash'] and m['usage'] and m['hashes']
    assert m['git_commit'] is None                                  # the installed code ran it, no checkout
    assert (run.iter_dir(2)/'imitation'/'model'/'config.json').exists() and 'the whole run took' in p.stdout
    for key, stage in m['stages'].items():
        it, name = key.split('/'); k = int(it.removeprefix('iter_'))
        executed = run.root/stage['notebook']
        assert run.is_done(k, name) and executed.with_suffix('.html').exists(), key
        lab = lab_notebook(ROOT/'nbs'/STAGE_NOTEBOOKS[name])        # what a checkout's run executes
        assert without_parameters(nbformat.read(executed, as_version=4)) == without_parameters(lab), key
    copies = Path(module).parent/'assets'/'nbs'                     # the kernels' folder: nothing new in it
    assert sorted(f.name for f in copies.iterdir()) == sorted(STAGE_NOTEBOOKS.values())
