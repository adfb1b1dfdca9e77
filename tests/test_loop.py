"""The loop's own mechanics, on small stand-in stage notebooks run by real papermill kernels."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from lion_nb.core import LionError, RunDir
from lion_nb.loop import STAGE_NOTEBOOKS, run_loop, run_stage

ROOT = Path(__file__).resolve().parents[1]

def stage_nb(body: str) -> nbformat.NotebookNode:
    "A stage notebook: a parameters cell, then `body`."
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("run_dir = None\niteration = 1\nconfig = None")
    params.metadata['tags'] = ['parameters']
    nb.cells = [nbformat.v4.new_code_cell("from lion_nb.core import RunDir"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    return nb

MARK = "import sys; stage = '{stage}'; RunDir(run_dir).mark_done(iteration, stage, ran=True)"

@pytest.fixture
def nbs_dir(tmp_path, monkeypatch):
    "A folder of stand-in stage notebooks that just mark themselves done."
    d = tmp_path/'nbs'; d.mkdir()
    for stage, name in STAGE_NOTEBOOKS.items(): nbformat.write(stage_nb(MARK.format(stage=stage)), d/name)
    monkeypatch.setenv('LION_NBS_DIR', str(d))
    return d

def test_failing_cell_names_notebook_and_cell(nbs_dir, tmp_path):
    nbformat.write(stage_nb("x = 1\nraise RuntimeError('teacher endpoint refused')"), nbs_dir/STAGE_NOTEBOOKS['imitation'])
    run = RunDir(tmp_path/'run')
    with pytest.raises(LionError) as e:
        run_stage('imitation', run, 1, ROOT/'configs'/'demo.yaml')
    msg = str(e.value)
    # cells: imports, parameters, injected parameters, the failing one
    assert '03_imitation.ipynb at cell 4 of the executed notebook' in msg and 'RuntimeError: teacher endpoint refused' in msg
    executed = nbformat.read(run.iter_dir(1)/'03_imitation.ipynb', as_version=4)
    assert any(o.get('ename') == 'RuntimeError' for c in executed.cells for o in c.get('outputs', []))
    assert (run.iter_dir(1)/'03_imitation.html').exists()

def test_run_skips_done_stages_and_records_manifest(nbs_dir, tmp_path):
    run = RunDir(tmp_path/'run'); lines = []
    m = run_loop(ROOT/'configs'/'demo.yaml', run.root, progress=lines.append)
    ran = [l for l in lines if 'finished' in l]
    assert len(ran) == 7   # iteration 1: pools, imitation, discrimination, generation, evaluation; iteration 2: imitation, evaluation
    assert set(m['stages']) == {'iter_1/pools', 'iter_1/imitation', 'iter_1/discrimination', 'iter_1/generation',
                                'iter_1/evaluation', 'iter_2/imitation', 'iter_2/evaluation'}
    assert m['config_hash'] and m['packages']['torch'] and (run.root/'config.yaml').exists()
    params = nbformat.read(run.iter_dir(2)/'03_imitation.ipynb', as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) and 'iteration = 2' in c.source for c in params.cells)
    lines.clear(); run_loop(ROOT/'configs'/'demo.yaml', run.root, progress=lines.append)
    assert sum('skipped' in l for l in lines) == 7 and not any('finished' in l for l in lines)

def test_resume_refuses_a_different_config(nbs_dir, tmp_path):
    run = RunDir(tmp_path/'run')
    run_loop(ROOT/'configs'/'demo.yaml', run.root, iterations=1, progress=lambda *_: None)
    other = tmp_path/'other.yaml'
    other.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('seed: 0', 'seed: 1'))
    with pytest.raises(LionError, match='different configuration'):
        run_loop(other, run.root, progress=lambda *_: None)

def test_secret_in_outputs_is_caught(nbs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('LION_FAKE_KEY', 'sk-lionfake-0000000000000000')
    cfg = tmp_path/'cfg.yaml'
    cfg.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('    concurrency: 4', '    concurrency: 4\n    api_key_env: LION_FAKE_KEY'))
    leak = "import os; open(RunDir(run_dir).root/'leak.txt', 'w').write(os.environ['LION_FAKE_KEY'])\n" + MARK.format(stage='evaluation')
    nbformat.write(stage_nb(leak), nbs_dir/STAGE_NOTEBOOKS['evaluation'])
    with pytest.raises(LionError, match=r'API key was found in 1 output file\(s\): .*leak.txt'):
        run_loop(cfg, tmp_path/'run', iterations=1, progress=lambda *_: None)
