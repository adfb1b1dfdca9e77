"""The dataset loaders on the real public files (via $LION_DATA_DIR), on small files in the formats
we have no copy of (Alpaca 52K, BBH), their errors, downloading with a SHA256 check from a local
HTTP server, and the pools stage on the demo data (also through papermill and the CLI)."""
import functools, http.server, json, os, sys, threading
from collections import Counter
from pathlib import Path

import pytest

from lion_nb import data
from lion_nb.core import ROLES, InputError, LionError, RunDir, parse_config, read_json, read_pool, sha256_file
from lion_nb.pools import categorize, load_dataset, pools_cli, run_pools

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('LION_DATA_DIR') or ROOT.parent/'shared'/'data')
needs_shared = pytest.mark.skipif(not (SHARED/'eval').exists(), reason=f"public data not found at {SHARED} (set $LION_DATA_DIR)")


def config(**pools):
    "A configuration with only what the pools stage reads."
    return parse_config({'name': 't', 'seed': 0, 'models': {'m': {'backend': 'embedded', 'model': 'qwen'}},
                         'roles': {r: 'm' for r in ROLES}, 'pools': {'dataset': 'demo', **pools}})


# --- the public files ---------------------------------------------------------------------------

@needs_shared
def test_vicuna80():
    v = data.load_vicuna80(SHARED)
    assert len(v) == 80 and len({r.id for r in v}) == 80
    cats = Counter(r.category for r in v)
    assert set(cats) == set(data.VICUNA_CATEGORIES) and cats['coding'] == 7 and cats['math'] == 3
    assert v[11].id == 'vicuna80-12' and all(r.source == 'vicuna80' for r in v)
    with_ref = {r.category for r in v if r.output}
    assert with_ref == {'coding', 'math'} and sum(bool(r.output) for r in v) == 10
    assert all(r.output is None for r in data.load_vicuna80(SHARED, references=False))


@needs_shared
def test_user252_and_seed_tasks(monkeypatch):
    monkeypatch.setenv('LION_DATA_DIR', str(SHARED))          # the folder from the environment
    u = data.load_user252()
    assert len(u) == 252 and len({r.id for r in u}) == 252 and u[0].id == 'user252-0'
    assert len({r.category for r in u}) == 71                 # the apps
    assert sum(bool(r.input) for r in u) > 150                # the instance input is kept
    s = data.load_seed_tasks()
    assert len(s) == 175 and len({r.id for r in s}) == 175 and s[0].id == 'seed_task_0'


@needs_shared
def test_agieval():
    items = data.load_agieval(SHARED)
    by = Counter(x.task for x in items)
    assert by == {'aqua-rat': 254, 'logiqa-en': 651, 'lsat-ar': 230, 'lsat-lr': 510, 'lsat-rc': 269, 'sat-math': 220,
                  'sat-en': 206, 'sat-en-without-passage': 206, 'math': 1000}
    for x in items:
        if x.task == 'math': assert x.kind == 'cloze' and x.answer and not x.options
        else: assert x.kind == 'mc' and x.answer in data.option_letters(x.options) and '(A) ' in x.prompt
    assert len({x.id for x in items}) == len(items)
    assert sum(x.passage is not None for x in items if x.task == 'sat-en') == 206
    assert [x.task for x in data.load_agieval(SHARED, subsets='lsat-ar')][:1] == ['lsat-ar']
    with pytest.raises(LionError, match='unknown AGIEval subset'): data.load_agieval(SHARED, subsets=['gaokao'])


@needs_shared
def test_hash_table_matches_the_public_files():
    states = {r['name']: r['state'] for r in data.data_status(SHARED)}
    present = {k: v for k, v in states.items() if v != 'missing'}
    assert [k for k, v in present.items() if v == 'ok'] == [k for k in data.DATA_FILES if data.DATA_FILES[k].sha256 and k != 'alpaca']
    assert len(present) == 13 + 27 and set(present.values()) == {'ok', 'unchecked'}   # BBH has no published hash


@needs_shared
def test_data_cli_status(capsys):
    assert data.data_cli(['status', '--data-dir', str(SHARED)]) == 0
    out = capsys.readouterr().out
    assert out.count(' ok ') == 13 and 'bbh/navigate' in out and 'missing' in out and 'alpaca_data.json' in out


# --- formats we have no copy of, and bad input ---------------------------------------------------

def test_alpaca_format_and_errors(tmp_path):
    f = tmp_path/'alpaca_data.json'
    entries = [{'instruction': 'Add the two numbers.', 'input': '4 and 9', 'output': '13'},
               {'instruction': 'Suggest a name for a cat.', 'input': '', 'output': 'Pepper'},
               {'instruction': 'Say hello in French.', 'output': 'Bonjour'}]
    f.write_text(json.dumps(entries, indent=2))
    recs = data.load_alpaca(tmp_path)
    assert [r.id for r in recs] == ['alpaca-0', 'alpaca-1', 'alpaca-2']
    assert recs[0].input == '4 and 9' and recs[2].input == '' and recs[1].output == 'Pepper'
    assert all(r.source == 'alpaca' for r in recs)
    entries[2] = {'instruction': ['not', 'text'], 'input': '', 'output': 'x'}
    f.write_text(json.dumps(entries, indent=2))
    with pytest.raises(InputError) as e: data.load_alpaca(tmp_path)
    assert e.value.path == str(f) and e.value.line == 12 and "entry 2: field 'instruction' should be str" in str(e.value)
    f.write_text('{"instruction": "x"}')
    with pytest.raises(InputError, match='expected a JSON list'): data.load_alpaca(tmp_path)
    f.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]')
    with pytest.raises(InputError, match=r'alpaca_data.json:2: entry 1: broken JSON'): data.load_alpaca(tmp_path)


def test_bbh_format(tmp_path):
    (tmp_path/'eval'/'bbh').mkdir(parents=True)
    (tmp_path/'eval'/'bbh'/'date_understanding.json').write_text(json.dumps({'canary': 'a note', 'examples': [
        {'input': 'Today is 3 May. What date is tomorrow?\nOptions:\n(A) 4 May\n(B) 2 May', 'target': '(A)'},
        {'input': 'Yesterday was Monday. What is today?\nOptions:\n(A) Sunday\n(B) Tuesday', 'target': '(B)'}]}, indent=1))
    (tmp_path/'eval'/'bbh'/'object_counting.json').write_text(json.dumps({'examples': [
        {'input': 'I have two pens and a cup. How many objects do I have?', 'target': '3'}]}))
    items = data.load_bbh(tmp_path, tasks=['date_understanding', 'object_counting'])
    assert [(x.id, x.kind, x.answer, len(x.options)) for x in items] == [
        ('bbh-date_understanding-0', 'mc', 'A', 2), ('bbh-date_understanding-1', 'mc', 'B', 2), ('bbh-object_counting-0', 'free', '3', 0)]
    assert items[0].prompt.startswith('Today is 3 May') and 'letter' in items[0].prompt
    (tmp_path/'eval'/'bbh'/'navigate.json').write_text('{"examples": [\n{"input": "Go left.", "target": "No"},\n{"input": "Go right."}]}')
    with pytest.raises(InputError, match=r"navigate.json:3: example 1: missing field 'target'"):
        data.load_bbh(tmp_path, tasks='navigate')
    with pytest.raises(InputError) as e: data.load_bbh(tmp_path)       # all 27 asked for; most are missing
    assert 'eval/bbh/boolean_expressions.json' in str(e.value) and 'suzgun/BIG-Bench-Hard' in str(e.value)


def test_bad_jsonl_names_file_and_line(tmp_path):
    q = tmp_path/'eval'/'vicuna80'/'question.jsonl'; q.parent.mkdir(parents=True)
    q.write_text('{"question_id": 1, "category": "math", "turns": ["What is 2 + 2?"]}\n'
                 '{"question_id": 2, "category": "math", "turns": []}\n')
    with pytest.raises(InputError, match=r"question.jsonl:2: field 'turns'"): data.load_vicuna80(tmp_path, references=False)
    q.write_text('{"question_id": 1, "category": "math", "turns": ["What is 2 + 2?"]}\n{"question_id": 1, "category": "math", "turns": ["x"]}\n')
    with pytest.raises(InputError, match='question.jsonl:2: duplicate question_id 1'): data.load_vicuna80(tmp_path, references=False)
    a = tmp_path/'eval'/'agieval'/'sat-math.jsonl'; a.parent.mkdir(parents=True)
    a.write_text('{"passage": null, "question": "1 + 1 = ?", "options": ["(A)1", "(B)2"], "label": "C"}\n')
    with pytest.raises(InputError, match=r"sat-math.jsonl:1: label 'C' is not one of the options \(A, B\)"):
        data.load_agieval(tmp_path, subsets='sat-math')


def test_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(InputError) as e: data.load_vicuna80(tmp_path)
    msg = str(e.value)
    assert str(tmp_path/'eval'/'vicuna80'/'question.jsonl') in msg
    assert 'https://raw.githubusercontent.com/lm-sys/FastChat' in msg and 'lion_nb data fetch vicuna80 --data-dir' in msg
    monkeypatch.delenv('LION_DATA_DIR', raising=False)
    with pytest.raises(LionError, match='LION_DATA_DIR'): data.load_seed_tasks()
    assert data.data_root(cfg=config().model_copy(update={'data_dir': str(tmp_path)})) == tmp_path


# --- downloading ---------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

@pytest.fixture
def http_folder():
    "Serve a folder over HTTP on 127.0.0.1; yields a function folder -> base URL; stopped afterwards."
    servers = []
    def serve(folder):
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start(); servers.append(srv)
        return f'http://127.0.0.1:{srv.server_address[1]}'
    yield serve
    for s in servers: s.shutdown(); s.server_close()


@needs_shared
def test_fetch_checks_the_table_hash(tmp_path, http_folder):
    base = http_folder(SHARED/'eval'/'vicuna80')                  # the public file, served locally
    p, = data.fetch('vicuna80/questions', tmp_path, url=f'{base}/question.jsonl')
    assert p == tmp_path/'eval/vicuna80/question.jsonl' and sha256_file(p) == data.DATA_FILES['vicuna80/questions'].sha256
    assert len(data.load_vicuna80(tmp_path, references=False)) == 80
    with pytest.raises(LionError, match='was not saved'):
        data.fetch('user252', tmp_path, url=f'{base}/question.jsonl')   # wrong content for that entry
    assert not (tmp_path/'eval/user_oriented252').exists() or not any((tmp_path/'eval/user_oriented252').iterdir())


def test_fetch_trust_on_first_use(tmp_path, http_folder, capsys):
    site = tmp_path/'site'; site.mkdir()
    (site/'t.json').write_text(json.dumps({'examples': [{'input': 'True and False is', 'target': 'False'}]}))
    base = http_folder(site)
    dest = tmp_path/'data'
    p, = data.fetch('bbh/boolean_expressions', dest, url=f'{base}/t.json')
    assert 'trust on first use' in capsys.readouterr().out
    rec = p.with_name(p.name + '.sha256')
    assert rec.read_text().split()[0] == sha256_file(p)
    (site/'t.json').write_text(json.dumps({'examples': [{'input': 'changed', 'target': 'True'}]}))
    with pytest.raises(LionError, match='boolean_expressions.json.sha256'):
        data.fetch('bbh/boolean_expressions', dest, url=f'{base}/t.json', force=True)
    assert data.load_bbh(dest, tasks='boolean_expressions')[0].answer == 'False'    # the first file is kept
    with pytest.raises(LionError, match='could not download'):
        data.fetch('bbh/navigate', dest, url=f'{base}/nothing-here.json')
    assert not list((dest/'eval'/'bbh').glob('.*.part'))


# --- demo data and pools -------------------------------------------------------------------------

def test_demo_data():
    d, q = data.demo_instructions(), data.demo_eval_questions()
    assert 90 <= len(d) <= 110 and len(q) == 20
    assert {r.category for r in d} == {r.category for r in q} == set(data.VICUNA_CATEGORIES)
    assert min(Counter(r.category for r in d).values()) >= 8
    assert sum(bool(r.input) for r in d) >= 10
    assert not {r.instruction for r in d} & {r.instruction for r in q}


@needs_shared
def test_categorize_agrees_with_vicuna_categories():
    v = data.load_vicuna80(SHARED, references=False)
    agree = sum(categorize(r.instruction) == r.category for r in v)
    assert agree >= 68, agree          # 72 of 80 when written
    hard_hitting = [r for r in v if r.category in ('coding', 'math', 'fermi', 'counterfactual', 'roleplay')]
    assert sum(categorize(r.instruction) == r.category for r in hard_hitting) >= len(hard_hitting) - 2


def ids(path): return [r.id for r in read_pool(path)]


def test_pools_sizes_seed_and_reserve(tmp_path):
    cfg = config(train_size=20, cache_size=40, reserve_size=15)
    s = run_pools(cfg, RunDir(tmp_path/'a'))
    rd = RunDir(tmp_path/'a')
    train, cache, reserve = ids(rd.pool(1, 'train')), ids(rd.pool(1, 'cache')), ids(rd.reserve(1))
    assert (len(train), len(cache), len(reserve)) == (20, 40, 15) == (s['train'], s['cache'], s['reserve'])
    assert set(train) <= set(cache) and not set(cache) & set(reserve)
    assert s['duplicates_dropped'] == 0 and s['loaded'] == len(data.demo_instructions())
    assert read_json(rd.done_file(1, 'pools'))['settings']['seed'] == s['settings']['seed']
    run_pools(cfg, RunDir(tmp_path/'b'))                                                     # same seed: same pools, same bytes
    assert rd.pool(1, 'cache').read_bytes() == RunDir(tmp_path/'b').pool(1, 'cache').read_bytes()
    run_pools(cfg.model_copy(update={'seed': 1}), RunDir(tmp_path/'c'))
    assert ids(RunDir(tmp_path/'c').pool(1, 'cache')) != cache
    same = run_pools(config(train_size=10_000, cache_size=10_000), RunDir(tmp_path/'d'))      # the paper: both = everything
    assert same['identical'] and same['capped'] and same['train'] == same['cache'] == len(data.demo_instructions())
    assert not RunDir(tmp_path/'d').reserve(1).exists()


def test_pools_drop_exact_duplicates(tmp_path):
    demo = data.demo_instructions()
    rows = [r.to_json() for r in demo]
    for k, r in enumerate(demo[:6]):       # six variants differing only in case and spacing, one with a different input
        rows.append({'id': f'dup-{k}', 'instruction': '  ' + r.instruction.upper().replace(' ', '  '), 'input': r.input + ('' if k else ' '),
                     'category': r.category})
    rows.append({'id': 'not-dup', 'instruction': demo[0].instruction, 'input': 'something else'})
    f = tmp_path/'mine.jsonl'; f.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    s = run_pools(config(dataset=str(f), train_size=500, cache_size=500), RunDir(tmp_path/'run'))
    assert s['loaded'] == len(demo) + 7 and s['duplicates_dropped'] == 6 and s['cache'] == len(demo) + 1
    assert ('dup-0', demo[0].id) in [tuple(x) for x in s['duplicate_examples']]


def test_pools_from_alpaca_get_rule_categories(tmp_path):
    f = tmp_path/'alpaca_data.json'
    f.write_text(json.dumps([{'instruction': 'Write a haiku about tea.', 'input': '', 'output': '...'},
                             {'instruction': 'Calculate 12 * 7.', 'input': '', 'output': '84'},
                             {'instruction': 'Write a Python function that adds two numbers.', 'input': '', 'output': 'def add'}]))
    cfg = config(dataset='alpaca', train_size=3, cache_size=3).model_copy(update={'data_dir': str(tmp_path)})
    s = run_pools(cfg, RunDir(tmp_path/'run'))
    assert s['categorized_by_rule'] == 3 and s['categories']['cache'] == {'coding': 1, 'math': 1, 'writing': 1}
    with pytest.raises(InputError, match='dataset file not found'): load_dataset(str(tmp_path/'none.jsonl'))


def test_pools_refuses_to_rebuild_used_pools(tmp_path):
    run_pools(config(train_size=5), RunDir(tmp_path))
    assert run_pools(config(train_size=5), RunDir(tmp_path))['skipped']
    with pytest.raises(LionError, match='other settings'): run_pools(config(train_size=6), RunDir(tmp_path))
    RunDir(tmp_path).mark_done(1, 'imitation')
    with pytest.raises(LionError, match='already used by imitation'): run_pools(config(train_size=6), RunDir(tmp_path), force=True)
    assert len(read_pool(RunDir(tmp_path).pool(1, 'train'))) == 5            # nothing was overwritten


def test_pools_cli_and_papermill(tmp_path, capsys):
    cfgf = tmp_path/'cfg.yaml'; cfgf.write_text(json.dumps(config().model_dump(mode='json')))
    from lion_nb.cli import main
    assert main(['pools', '--config', str(cfgf), '--run-dir', str(tmp_path/'cli'), '--cache-size', '12', '--train-size', '6']) == 0
    assert len(read_pool(RunDir(tmp_path/'cli').pool(1, 'cache'))) == 12
    assert main(['pools', '--config', str(cfgf), '--run-dir', str(tmp_path/'cli2'), '--dataset', str(tmp_path/'x.txt')]) == 2
    assert 'pools.dataset' in capsys.readouterr().err
    import papermill as pm
    out = tmp_path/'pools_out.ipynb'
    cfg_pm = tmp_path/'pm.yaml'                                 # the stage's settings come from the configuration
    cfg_pm.write_text(json.dumps(config(train_size=7, reserve_size=3).model_dump(mode='json')))
    pm.execute_notebook(str(ROOT/'nbs'/'02_pools.ipynb'), str(out), cwd=str(ROOT/'nbs'), progress_bar=False, kernel_name='python3', language='python',
                        parameters={'run_dir': str(tmp_path/'pm'), 'config': str(cfg_pm)})
    rd = RunDir(tmp_path/'pm')
    assert rd.is_done(1, 'pools') and len(read_pool(rd.pool(1, 'train'))) == 7
    assert (rd.stage_dir(1, 'pools')/'categories.png').exists()
    assert 'Train Pool 7' in out.read_text()


# --- `lion_nb data fetch alpaca`: where the README says, online from a local server, offline with a clear message ---

def _lion(*args, **kw):
    import subprocess
    env = {**os.environ, **kw.pop('env', {})}
    return subprocess.run([sys.executable, '-c', 'import sys; from lion_nb.cli import main; sys.exit(main())', *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env, **kw)

def test_fetch_alpaca_into_the_configs_data_dir(tmp_path, http_folder):
    site = tmp_path/'site'; site.mkdir()
    entries = [{'instruction': 'Name a colour.', 'input': '', 'output': 'Blue'}, {'instruction': 'Add.', 'input': '2 and 3', 'output': '5'}]
    (site/'alpaca_data.json').write_text(json.dumps(entries))
    (tmp_path/'configs').mkdir()
    cfgf = tmp_path/'configs'/'p.yaml'
    cfgf.write_text((ROOT/'configs'/'demo.yaml').read_text() + 'data_dir: ../data/external\n')
    r = _lion('data', 'fetch', 'alpaca', '--config', str(cfgf), '--url', f"{http_folder(site)}/alpaca_data.json")
    assert r.returncode == 0, r.stderr
    f = tmp_path/'data'/'external'/'alpaca_data.json'                 # relative to the config file, as the README says
    assert r.stdout.strip().splitlines()[-1] == str(f) and f.with_name('alpaca_data.json.sha256').exists()
    from lion_nb.core import load_config
    assert [x.input for x in data.load_alpaca(cfg=load_config(cfgf))] == ['', '2 and 3']
    assert [x.id for x in data.load_alpaca(f.parent)] == ['alpaca-0', 'alpaca-1']

def test_fetch_alpaca_offline_says_where_to_put_it(tmp_path):
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]     # nothing listens here
    r = _lion('data', 'fetch', 'alpaca', '--url', f'http://127.0.0.1:{port}/alpaca_data.json', env={'LION_DATA_DIR': str(tmp_path)})
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert 'could not download' in r.stderr and f"put it at {tmp_path/'alpaca_data.json'}" in r.stderr
    assert not list(tmp_path.iterdir())                                                   # nothing half-written
