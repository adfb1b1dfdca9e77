"""The whole loop, end to end: real papermill, torchrun, openai client and transformers, on a tiny scale.

One uninterrupted run (the session's `demo_run`, see tests/conftest.py) is checked stage by stage; a second run is
killed (SIGKILL) at a random moment, resumed, and must end with the same pools, splits, generations and metrics, while
the server's counts show that no finished request was sent twice.
"""
import json, os, random, re, shutil, signal, subprocess, time
from pathlib import Path

import pytest

from lion_nb.core import RunDir, read_json, read_log, read_pool
from lion_fixtures import LION, ROOT, is_hard

def lion_run(config, run_dir, env, **kw):
    return subprocess.Popen(LION + ['run', '--config', str(config), '--run-dir', str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, **kw)

@pytest.fixture(scope='module')
def server(demo_run): return demo_run['srv']

@pytest.fixture(scope='module')
def config(demo_run): return demo_run['cfg']

@pytest.fixture(scope='module')
def env(demo_run):
    "The environment a run of `config` needs: its remote model's (fake) key in $LION_FAKE_KEY."
    return demo_run['env']

@pytest.fixture(scope='module')
def full_run(demo_run):
    p = demo_run['proc']; out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return demo_run['run'], out

def outcome(run: RunDir) -> dict:
    "What a run produced, in a form two runs can be compared by: pools, splits, generations, metrics."
    res = {}
    for p in sorted(run.root.glob('iter_*/pools/*.jsonl')): res[str(p.relative_to(run.root))] = [r.to_json() for r in read_pool(p)]
    for p in sorted(run.root.glob('iter_*/discrimination/*.jsonl')):
        if p.stem in ('hard', 'easy', 'unscored'): res[str(p.relative_to(run.root))] = sorted(r['id'] for r in read_log(p))
    for p in sorted(run.root.glob('iter_*/evaluation/metrics.json')):
        m = read_json(p); res[str(p.relative_to(run.root))] = {k: m.get(k) for k in ('vicuna80', 'demo', 'user252') if k in m}
    return res

def test_full_run_produces_every_stage(full_run):
    run, out = full_run
    for k, stages in {1: ['pools', 'imitation', 'discrimination', 'generation', 'evaluation'], 2: ['imitation', 'evaluation']}.items():
        for s in stages: assert run.is_done(k, s), (k, s)
        assert (run.iter_dir(k)/'03_imitation.ipynb').exists() and (run.iter_dir(k)/'03_imitation.html').exists()
    assert (run.iter_dir(2)/'imitation'/'model'/'config.json').exists()
    m = read_json(run.manifest)
    assert m['config_hash'] and m['usage'] and m['hashes'] and len(m['stages']) == 7
    assert 'time per stage' in out and 'usage' in out
    for row in ('pools', 'imitation', 'discrimination', 'generation', 'evaluation'):   # the end-of-run table
        assert any(l.split()[1:2] == [row] for l in out.splitlines() if l[:4].strip().isdigit()), (row, out)
    assert ' hard / ' in out and ' kept of ' in out and 'the whole run took' in out

def test_split_matches_the_scripted_referee(full_run):
    run, _ = full_run
    d = run.stage_dir(1, 'discrimination')
    hard, easy = read_log(d/'hard.jsonl'), read_log(d/'easy.jsonl')
    assert len(hard) + len(easy) == len(read_pool(run.pool(1, 'cache')))
    from lion_nb.core import user_message
    for r in hard: assert is_hard(user_message(r['instruction'], r.get('input', '')))
    for r in easy: assert not is_hard(user_message(r['instruction'], r.get('input', '')))
    assert all(r['d'] == 6 for r in hard) and all(r['d'] == 0 for r in easy)

def test_pools_move_as_the_method_says(full_run):
    run, _ = full_run
    new = read_pool(run.pool(2, 'train'))
    assert 0 < len(new) <= 4 and all(r.prov.kind in ('hard', 'easy') and r.prov.parent_id for r in new)
    assert [r.id for r in read_pool(run.pool(2, 'cache'))] == [r.id for r in read_pool(run.pool(1, 'cache'))] + [r.id for r in new]

def served_total(server) -> int: return sum(server.served.values())

def cached_responses(run_dir, model='scripted') -> int:
    "How many of the server's responses a run's LLM cache holds (each is a finished request; the local student's are left out)."
    import sqlite3
    db = Path(run_dir)/'cache'/'llm_cache.sqlite'
    if not db.exists(): return 0
    with sqlite3.connect(db) as c:
        return sum(json.loads(v).get('model') == model for (v,) in c.execute('SELECT value FROM responses'))

def test_kill_and_resume_ends_like_an_uninterrupted_run(full_run, config, server, env, tmp_path):
    run_dir = tmp_path/'run'
    uninterrupted = cached_responses(full_run[0].root)      # requests an uninterrupted run sends (all distinct, no faults)
    p = lion_run(config, run_dir, env, start_new_session=True)
    time.sleep(random.Random(os.getpid()).uniform(20, 70))
    os.killpg(p.pid, signal.SIGKILL); p.communicate()
    finished = cached_responses(run_dir)
    before = served_total(server)
    p = lion_run(config, run_dir, env); out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-4000:]
    assert outcome(RunDir(run_dir)) == outcome(full_run[0])
    # The resumed run sends exactly what the killed one had not finished (requests in flight at the kill included):
    # a finished request sent again would make this larger.
    assert served_total(server) - before == uninterrupted - finished, (served_total(server) - before, uninterrupted, finished)

def tree_digest(root: Path) -> dict:
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}

def test_study_forks_a_referee_blind_arm_and_compares(full_run, config, server, env, tmp_path):
    """lion_nb study, seed 0: the Lion arm resumes (all done), the random-seeds control forks from it (iteration 1
    byte for byte; no referee; random parents), and the two are compared per seed and pooled, with budgets."""
    src, _ = full_run
    study = tmp_path/'study'
    shutil.copytree(src.root, study/'seed_0'/'lion', symlinks=True)       # seed 0's Lion arm, already run
    lion, arm = RunDir(study/'seed_0'/'lion'), RunDir(study/'seed_0'/'random-seeds')
    before = served_total(server)
    p = subprocess.run(LION + ['study', '--config', str(config), '--seeds', '0', '--out', str(study)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert 'pools: done already, skipped' in p.stdout and 'iter 1/2 pools: running' not in p.stdout
    for rel in ('iter_1/pools', 'iter_1/imitation'):
        assert tree_digest(arm.root/rel) == tree_digest(lion.root/rel), rel
    assert not arm.stage_dir(1, 'discrimination').exists() and arm.is_done(2, 'evaluation')
    s = read_json(arm.stage_dir(1, 'generation')/'summary.json')
    assert s['seed_source'] == 'random' and s['kept'] > 0
    m = read_json(arm.manifest)
    assert m['baseline'] == 'random-seeds' and m['forked_from'] == str(lion.root)
    assert 'iter_1/imitation' not in m['stages']                    # the fork's stage, not re-run
    assert served_total(server) - before > 0                        # its own generation and evaluation were sent
    # the comparison: paired on the items both final students were judged on, per seed and pooled
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out['sets'] and out['seeds'] == [0]
    for name, c in out['sets'].items():
        assert c['verdict'].startswith('lion - random-seeds') and c['pooled']['n'] > 0, (name, c)
        assert c['pooled']['lo'] <= c['pooled']['value'] <= c['pooled']['hi']
        assert c['pooled'] == out['per_seed']['0'][name]['diff']   # one seed: the pooled interval is the seed's
    assert 'pooled' in p.stdout and (study/'study.png').stat().st_size > 0
    assert 'seed 0, probes: referee ' in p.stdout and ', judge ' in p.stdout    # whether the verdicts can be trusted
    # the control's budget starts at its fork, and what it repeats of the Lion arm's calls comes from the cache
    assert f'random-seeds arm ({arm.root}): budget per role; forked from {lion.root}' in p.stdout
    assert re.search(r'judge +\d+ calls +[1-9][\d,]* cached', p.stdout.split('random-seeds arm (')[-1])
    budgets = read_json(study/'study.json')['seeds']['0']['budgets']
    roles = {lab: {r['role'] for r in rows} for lab, rows in budgets.items()}
    assert 'referee' in roles['lion'] and 'referee' not in roles['random-seeds']     # the control asks no referee
    assert {'teacher', 'generator'} <= roles['random-seeds']
    # the same two arms through lion_nb compare
    p = subprocess.run(LION + ['compare', str(lion.root), str(arm.root), '--labels', 'lion', 'random-seeds'],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])['sets'] == out['per_seed']['0']
    assert 'lion, probes: referee ' in p.stdout                          # beside the verdicts, as in the study
