"""The GPU machine, simulated here (issue 26): its package list, the wheels the GPU check carries, and
`bench/gpu_check.sh --cpu-smoke` in a virtual environment that holds only what that machine holds.

The slow test builds that environment with bench/gpu_sim_venv.sh (cached under a folder keyed by the package
lists: ~/.cache/lion_nb/gpu_sim, or $LION_GPU_SIM_ROOT), so a missing wheel shows here, before GPU time is spent.
"""
import importlib.metadata as md, json, os, re, subprocess, sys, time
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'bench'
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402

norm = lambda s: re.sub(r'[-_.]+', '-', s).lower()
listed = lambda: dict(l.strip().split('==') for l in (BENCH / 'gpu_wheels.txt').read_text().split())
image = lambda: {norm(l) for l in (BENCH / 'gpu_image_packages.txt').read_text().split()}
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false',
       'OMP_WAIT_POLICY': 'PASSIVE', 'PYTHONPATH': str(ROOT)}

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {blocked!r}: raise ImportError('not on the GPU machine: ' + name, name=name)
sys.meta_path.insert(0, Block())
import lion_nb.train, lion_nb.engine, lion_nb.llm, lion_nb.clients, lion_nb.limits, lion_nb.models
print(sorted(m for m in sys.modules if m.split('.')[0] in {blocked!r}))
"""


def test_train_and_engine_import_without_openai():
    "`import lion_nb.train` (and the engine, the clients, the limits) loads with no openai at all."
    r = subprocess.run([sys.executable, '-c', BLOCK.format(blocked={'openai'})], capture_output=True, text=True,
                       env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == '[]'


def test_wheel_list_is_closed():
    """Every need (Requires-Dist, for Python 3.12 on Linux, extras left out) of every carried package is either
    carried too or on the GPU machine; each carried package's version is the one tested here."""
    carried, on_image = {norm(k): v for k, v in listed().items()}, image()
    env = {'python_version': '3.12', 'python_full_version': '3.12.1', 'sys_platform': 'linux',
           'platform_system': 'Linux', 'platform_machine': 'x86_64', 'os_name': 'posix',
           'implementation_name': 'cpython', 'platform_python_implementation': 'CPython', 'extra': ''}
    gaps = []
    for name, ver in carried.items():
        assert md.version(name) == ver, f"{name}: carried {ver}, tested here with {md.version(name)}"
        for r in map(Requirement, md.requires(name) or []):
            if r.marker is not None and not r.marker.evaluate(env): continue
            if norm(r.name) not in carried and norm(r.name) not in on_image: gaps.append(f'{name} -> {r}')
    assert not gaps, gaps
    for pkg in ('pydantic', 'fastcore', 'openai'):           # what that machine lacks and lion_nb.train needs
        assert norm(pkg) in carried and norm(pkg) not in on_image


def test_plan_wheels(tmp_path):
    "The check installs a carried wheel when the package is missing or older, and names those with no wheel."
    for f in ('nosuchpkg_t26-1.0-py3-none-any.whl', 'pytest-999.0-py3-none-any.whl'):
        (tmp_path / f).write_bytes(b'')
    lst = tmp_path / 'list.txt'
    lst.write_text("numpy==1.0\nnosuchpkg-t26==1.0\npytest==999.0\nabsent-t26==2.0\n")
    files, missing = gpu_check.plan_wheels(lst, tmp_path)
    assert [Path(f).name for f in files] == ['nosuchpkg_t26-1.0-py3-none-any.whl', 'pytest-999.0-py3-none-any.whl']
    assert missing == ['absent-t26==2.0']                    # numpy here is newer than 1.0: not installed


def test_gpu_check_exit_codes(tmp_path):
    "Without a CUDA torch the check stops at once with its own exit code; a missing wheel has another."
    r = subprocess.run(['bash', str(BENCH / 'gpu_check.sh')], capture_output=True, text=True, timeout=300,
                       env={**ENV, 'PYTHON': sys.executable, 'OUT': str(tmp_path)}, cwd=ROOT)
    assert r.returncode == gpu_check.EXIT_CPU_TORCH and 'CPU-only torch' in r.stdout, r.stdout[-2000:]
    lst = tmp_path / 'w.txt'
    lst.write_text('absent-t26==2.0\n')
    r = subprocess.run([sys.executable, str(BENCH / 'gpu_check.py'), '--plan-wheels', str(lst), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == gpu_check.EXIT_WHEELS and 'absent-t26==2.0' in r.stderr


def sim_root() -> Path:
    return Path(os.environ.get('LION_GPU_SIM_ROOT') or Path.home() / '.cache' / 'lion_nb' / 'gpu_sim')


@pytest.mark.slow
def test_cpu_smoke_in_simulated_gpu_machine(tmp_path):
    """A venv with only the GPU machine's packages (CPU torch) and the carried wheels beside it:
    `bench/gpu_check.sh --cpu-smoke` installs those wheels into a target folder and passes."""
    t0 = time.monotonic()
    b = subprocess.run(['bash', str(BENCH / 'gpu_sim_venv.sh'), str(sim_root())], capture_output=True,
                       text=True, timeout=1800, cwd=ROOT)
    assert b.returncode == 0, b.stderr[-3000:]
    paths = dict(l.split('=', 1) for l in b.stdout.split() if '=' in l)
    print(f"sim venv: {paths['VENV']} (build {paths['BUILD_S']} s; this call {time.monotonic() - t0:.1f} s)")
    py = Path(paths['VENV']) / 'bin' / 'python'
    for pkg in ('pydantic', 'fastcore', 'openai'):            # the simulation lacks what that machine lacks
        assert subprocess.run([str(py), '-c', f'import {pkg}'], capture_output=True).returncode != 0
    env = {k: v for k, v in ENV.items() if k != 'PYTHONPATH'}
    env.update(PYTHON=str(py), GPU_WHEELS=str(tmp_path / 'none'), GPU_SITE=str(tmp_path / 'site'), OUT=str(tmp_path))
    r = subprocess.run(['bash', str(BENCH / 'gpu_check.sh'), '--cpu-smoke'], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)           # without the carried wheels: stops, names them
    assert r.returncode == gpu_check.EXIT_WHEELS and 'wheels missing: fastcore==' in r.stdout, r.stdout[-2000:]
    assert 'openai==' in r.stdout and 'pydantic==' in r.stdout
    env.update(GPU_WHEELS=paths['WHEELS'], OUT=str(tmp_path / 'out'))
    r = subprocess.run(['bash', str(BENCH / 'gpu_check.sh'), '--cpu-smoke', '--out', str(tmp_path / 'work')],
                       capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    print(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r'installing (\d+) carried wheel', r.stdout)
    res = json.loads((tmp_path / 'out' / 'gpu_check.json').read_text())
    assert res['ok'] and res['mode'] == 'cpu-smoke'
    assert res['train']['resumed_from_checkpoint'] and res['train']['export_complete']
    assert res['generation']['splits'] > 0 and res['generation']['failed'] == 0
    assert res['engine_hf']['done'] == 32 and res['engine_hf']['restart_ok']
    assert 'rouge-score' in res['env']['lion_nb_missing']   # a stripped environment, as on that machine
    assert not {'pydantic', 'fastcore', 'openai'} & set(res['env']['lion_nb_missing'])


def test_extrapolation_formulas():
    "The 7B/8-GPU figures follow the printed formulas (the GPU-only arithmetic, checked here on made-up numbers)."
    t = {'params': 1.07e9, 'layers': 4, 'world': 1, 'micro': 4, 'seq': 1024, 'tokens_per_s': 40000.0,
         'checkpoint_s': 10.0, 'export_s': 2.0, 'peak_gb_sync_on': 22.0, 'peak_gb_sync_off': 24.0}
    ex, formulas = gpu_check.extrapolate(t, 'NVIDIA H100 80GB HBM3')
    r = 6.74e9 / 1.07e9
    assert ex['mfu'] == round(6 * 1.07e9 * 40000 / 989e12, 4)
    assert ex['tokens_per_s_7b_8gpu'] == round(40000 / r * 8, 1)
    assert ex['checkpoint_s_7b'] == round(10 * r, 1) and ex['export_s_7b'] == round(2 * r, 1)
    state1, inputs = 16 * 1.07e9 / 2**30, 28 * 4 * 1024 * 4096 * 2 / 2**30
    assert ex['peak_gb_sync_on_7b_8gpu'] == round(16 * 6.74e9 / 2**30 / 8 + (22 - state1) + inputs, 1)
    assert ex['peak_gb_sync_off_7b_8gpu'] - ex['peak_gb_sync_on_7b_8gpu'] == pytest.approx(
        4 * 6.74e9 / 2**30 + 2, abs=0.11)          # the unsharded fp32 gradient, plus the measured difference
    assert len(formulas) == 5 and all('=' in f for f in formulas)
