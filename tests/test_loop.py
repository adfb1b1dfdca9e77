"""The loop's own mechanics, on small stand-in stage notebooks run by real papermill kernels."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from lion_nb.core import LionError, RunDir, load_config, read_pool
from lion_nb.algorithm import STAGE_NOTEBOOKS
from lion_nb.loop import prepare_run_dir, run_loop, run_stage

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
    # the demo's 1 round: pools, imitation, discrimination, generation; the final imitation, the gap on round 1's
    # hard items measured again (discriminate_last), and the evaluation of the final student beside the base one
    assert len(ran) == 7
    assert set(m['stages']) == {'iter_1/pools', 'iter_1/imitation', 'iter_1/discrimination', 'iter_1/generation',
                                'iter_2/imitation', 'iter_2/discrimination', 'iter_2/evaluation'}
    assert m['config_hash'] and m['packages']['torch'] and (run.root/'config.yaml').exists()
    assert m['iterations'] == 1 and m['trained_students'] == 2 and m['trained_instructions'] == 12 + 8 and 'final imitation' in m['plan']
    params = nbformat.read(run.iter_dir(2)/'03_imitation.ipynb', as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) and 'iteration = 2' in c.source for c in params.cells)
    lines.clear(); run_loop(ROOT/'configs'/'demo.yaml', run.root, check=False, progress=lines.append)
    assert sum('skipped' in l for l in lines) == 7 and not any('finished' in l for l in lines)

def test_the_study_profile_evaluates_only_the_final_student(nbs_dir, tmp_path):
    "configs/study.yaml sets loop.evaluate: final: the round's student is not evaluated, the final one is."
    m = run_loop(ROOT/'configs'/'study.yaml', tmp_path/'run', progress=lambda *_: None)
    assert set(m['stages']) == {'iter_1/pools', 'iter_1/imitation', 'iter_1/discrimination', 'iter_1/generation',
                                'iter_2/imitation', 'iter_2/discrimination', 'iter_2/evaluation'}
    assert m['plan'].endswith('the final student is evaluated')

def test_resume_refuses_a_different_config(nbs_dir, tmp_path):
    run = RunDir(tmp_path/'run')
    prepare_run_dir(ROOT/'configs'/'demo.yaml', run)
    other = tmp_path/'other.yaml'
    other.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('seed: 0', 'seed: 1'))
    with pytest.raises(LionError, match=r'different configuration.*these settings change results: seed: 0 -> 1'):
        run_loop(other, run.root, progress=lambda *_: None)

def test_config_edit_of_operational_settings_keeps_resume(nbs_dir, tmp_path):
    "rpm, concurrency, timeouts, retries, budget and a shared cache folder are not part of a run's identity."
    run = RunDir(tmp_path/'run'); lines = []
    run_loop(ROOT/'configs'/'demo.yaml', run.root, iterations=1, check=False, progress=lambda *_: None)
    edited = tmp_path/'edited.yaml'
    edited.write_text((ROOT/'configs'/'demo.yaml').read_text()
                      .replace('    concurrency: 4', '    concurrency: 2\n    rpm: 30\n    tpm: 9000')
                      .replace('timeout_s: 900', 'timeout_s: 60').replace('max_retries: 2', 'max_retries: 4')
                      .replace('seed: 0', 'seed: 0\nbudget_usd: 3.5\ncache_dir: shared_cache'))
    m = run_loop(edited, run.root, iterations=1, check=False, progress=lines.append)
    assert sum('skipped' in l for l in lines) == 7 and not any('finished' in l for l in lines)
    saved = load_config(run.root/'config.yaml')                 # the new operational values take effect
    assert saved.models['qwen-local'].rpm == 30 and saved.budget_usd == 3.5 and m['config']['models']['qwen-local']['concurrency'] == 2
    assert run.cache.is_symlink() and run.cache.resolve() == (tmp_path/'shared_cache').resolve()   # relative to the config file
    edited.write_text(edited.read_text().replace('max_new_tokens: 128\n  repair', 'max_new_tokens: 64\n  repair'))
    with pytest.raises(LionError, match=r'sampling.max_new_tokens: 128 -> 64'):
        run_loop(edited, run.root, iterations=1, check=False, progress=lambda *_: None)

def test_shared_cache_folder_serves_two_runs(tmp_path):
    shared = tmp_path/'llm_cache'
    for name in ('a', 'b'): prepare_run_dir(ROOT/'configs'/'demo.yaml', RunDir(tmp_path/name), cache_dir=str(shared))
    (shared/'marker').write_text('x')
    assert (RunDir(tmp_path/'a').cache/'marker').exists() and (RunDir(tmp_path/'b').cache/'marker').exists()
    assert load_config(tmp_path/'a'/'config.yaml').cache_dir == str(shared.resolve())

def test_secret_in_outputs_is_caught(nbs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('LION_FAKE_KEY', 'sk-lionfake-0000000000000000')
    cfg = tmp_path/'cfg.yaml'
    cfg.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('    concurrency: 4', '    concurrency: 4\n    api_key_env: LION_FAKE_KEY'))
    leak = "import os; open(RunDir(run_dir).root/'leak.txt', 'w').write(os.environ['LION_FAKE_KEY'])\n" + MARK.format(stage='evaluation')
    nbformat.write(stage_nb(leak), nbs_dir/STAGE_NOTEBOOKS['evaluation'])
    with pytest.raises(LionError, match=r'API key was found in 1 output file\(s\): .*leak.txt'):
        run_loop(cfg, tmp_path/'run', iterations=1, check=False, progress=lambda *_: None)

def test_relative_paths_resolve_against_the_config_file(tmp_path):
    "A config's relative dataset path works in the real pools notebook, which papermill runs from nbs/."
    (tmp_path/'data').mkdir(); (tmp_path/'configs').mkdir()
    rows = [{'id': f'p{i}', 'instruction': f'Name {i} colours of the {w} kind.'} for i, w in enumerate('abcdefgh')]
    (tmp_path/'data'/'mine.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    cfg = tmp_path/'configs'/'c.yaml'
    cfg.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('dataset: demo ', 'dataset: ../data/mine.jsonl ')
                   .replace('train_size: 12', 'train_size: 4').replace('cache_size: 12', 'cache_size: 6').replace('reserve_size: 8', 'reserve_size: 2'))
    run = RunDir(tmp_path/'run')
    _, saved = prepare_run_dir(cfg, run)
    assert load_config(saved).pools.dataset == str((tmp_path/'data'/'mine.jsonl').resolve())
    run_stage('pools', run, 1, saved)
    assert run.is_done(1, 'pools') and len(read_pool(run.pool(1, 'cache'))) == 6

def test_a_second_run_on_a_held_folder_is_refused(tmp_path):
    "While one process holds a run folder, `lion_nb run` on it exits 2 naming the holder, and writes nothing."
    from lion_nb.operations import run_lock
    run = RunDir(tmp_path/'run')
    with run_lock(run):
        p = subprocess.run([sys.executable, '-c', 'import sys; from lion_nb.cli import main; sys.exit(main())', 'run',
                            '--config', str(ROOT/'configs'/'demo.yaml'), '--run-dir', str(run.root)],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f'is in use by another lion_nb run (pid {os.getpid()})' in p.stderr
    assert sorted(x.name for x in run.root.iterdir()) == ['.lock']                   # no config, no manifest
    with run_lock(run): pass                                                        # free again once released

def test_fork_refuses_a_source_run_with_other_results_changing_settings(nbs_dir, tmp_path):
    "--fork-from names every result-changing setting in which the source run differs, and copies nothing."
    src = tmp_path/'lion'
    run_loop(ROOT/'configs'/'demo.yaml', src, check=False, progress=lambda *_: None)
    other = tmp_path/'other.yaml'
    other.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('seed: 0', 'seed: 1'))
    with pytest.raises(LionError, match=r'--fork-from .*differs in settings that change results.*: seed: 0 -> 1$'):
        run_loop(other, tmp_path/'control', baseline='random-seeds', fork_from=src, check=False, progress=lambda *_: None)
    assert not (tmp_path/'control'/'iter_1'/'imitation').exists()
    lines = []   # the same configuration forks
    run_loop(ROOT/'configs'/'demo.yaml', tmp_path/'control2', baseline='random-seeds', fork_from=src, check=False,
             progress=lines.append)
    assert any('forked from' in l for l in lines)

# ---------------------------------------------------------------- issue 26: preflight of a vLLM student

LLAMA_7B = dict(architectures=['LlamaForCausalLM'], model_type='llama', hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)


def test_paper_profile_check_fails_a_7b_student_on_a_machine_without_a_gpu(tmp_path):
    """`--check` on the paper profile with its 7B student (served by vLLM): the checkpoint is checked (parameters
    counted from its config on the meta device, no weights read) and, with no GPU and less than 108 GB of RAM here, the
    devices check fails saying the student is too large to train on this machine. It used to skip the vLLM student and
    print 'ok devices: no GPU visible: training runs on CPU in 8 process(es)'."""
    import torch, yaml
    from lion_nb.operations import available_memory_bytes, preflight
    from lion_nb.train import tiny_tokenizer
    if torch.cuda.is_available() or available_memory_bytes() > 108e9:
        pytest.fail("this test describes a machine without a GPU and with less than 108 GB of RAM")
    ckpt = tmp_path/'llama-7b'
    ckpt.mkdir()
    (ckpt/'config.json').write_text(json.dumps(LLAMA_7B))
    tiny_tokenizer(chat_template=False).save_pretrained(ckpt)
    cfg = yaml.safe_load((ROOT/'configs'/'paper.yaml').read_text())
    cfg['models']['llama-7b']['model'] = str(ckpt)
    (tmp_path/'paper.yaml').write_text(yaml.safe_dump(cfg))
    lines = []
    with pytest.raises(LionError, match='devices'):
        preflight(tmp_path/'paper.yaml', tmp_path/'run', progress=lines.append)
    line = lambda name: next(l for l in lines if f' {name} ' in l)
    assert line('model llama-7b').startswith('[check] ok') and '6,738.4M parameters' in line('model llama-7b')
    dev = line('devices')
    assert dev.startswith('[check] FAIL') and 'too large to train on this machine' in dev, dev
    assert 'needs about 108 GB (16 bytes a parameter' in dev and "train.device is 'cuda'" in dev
    assert line('disk').startswith('[check] ') and 'not estimated' not in line('disk')    # sized for 6.7B now
    if shutil.which('vllm') is None and not (Path(sys.executable).parent/'vllm').exists():
        assert line('engine').startswith('[check] FAIL') and f"not found beside {sys.executable}" in line('engine')
