"""Issue 25 (chat side): the paper profile against OpenAI's API as it is today, through the stand-in's today mode
(`FakeOpenAI.today`): the live preflight, request shapes from the capability table and from refusals, reasoning
headroom and cut replies, reasoning tokens in the usage log, and the models `configs/paper.yaml` ships."""
import json, os, re, subprocess, sys
from pathlib import Path

import pytest

from lion_nb.cache import DEFAULT_HEADROOM, ChatRequest
from lion_nb.core import ModelSpec, RunDir, load_config, parse_config, read_log
from lion_nb.limits import Budget
from lion_nb.llm import make_client
from lion_nb.operations import endpoint_checks, preflight, request_shapes
from lion_nb.testing import TODAY_CATALOG, _reasoning, serve

ROOT = Path(__file__).resolve().parents[1]
LION = str(Path(sys.executable).parent/'lion_nb')
PUBLISHED = {'gpt-6.1-terra': 'gpt-3.5-turbo', 'gpt-6.1-sol': 'gpt-4'}   # the shipped cast -> the paper's


def paper_config(tmp_path: Path, base_url: str, published: bool = False) -> Path:
    "configs/paper.yaml pointed at the stand-in; with `published`, the paper's own cast (as the comment keeps it)."
    text = (ROOT/'configs'/'paper.yaml').read_text().replace('https://api.openai.com/v1', base_url)
    if published:
        text = re.sub(r'\n    (reasoning_effort|reasoning_headroom|max_reasoning_headroom):[^\n]*', '', text)
        for new, old in PUBLISHED.items(): text = text.replace(new, old)
    path = tmp_path/('published.yaml' if published else 'paper.yaml')
    path.write_text(text)
    return path


def check(cfg: Path, tmp_path: Path):
    return subprocess.run([LION, 'run', '--config', str(cfg), '--run-dir', str(tmp_path/'run'), '--check'], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env={**os.environ, 'OPENAI_API_KEY': 'sk-test-key'})


def test_paper_check_names_every_shut_down_model_and_passes_the_shipped_cast(tmp_path):
    "Done-when of issue 25: `lion_nb run --config configs/paper.yaml --check` against today's API, once per cast."
    with serve() as srv:
        srv.today()
        old = check(paper_config(tmp_path, srv.base_url, published=True), tmp_path)
        new = check(paper_config(tmp_path, srv.base_url), tmp_path)
        chat_calls = srv.n_chat
    for r in (old, new): assert 'Traceback' not in r.stdout + r.stderr and r.returncode == 2, r.stderr   # data, student fail here
    fails = [l for l in old.stdout.splitlines() if l.startswith('[check] FAIL model gpt')]
    assert len(fails) == 2, old.stdout
    assert "teacher/referee/generator 'gpt-3.5-turbo' is not offered by" in fails[0] and 'model_not_found' in fails[0]
    assert "judge 'gpt-4' is not offered by" in fails[1] and 'It offers: gpt-6-luna, gpt-6.1-sol, gpt-6.1-terra' in fails[1]
    assert 'model gpt-3.5-turbo, model gpt-4' in old.stderr
    lines = new.stdout.splitlines()
    ok = [l for l in lines if l.startswith(('[check] ok   model gpt', '[check] ok   shape gpt'))]
    assert len(ok) == 4 and not [l for l in lines if l.startswith(('[check] FAIL model gpt', '[check] FAIL shape'))], new.stdout
    assert any('gpt-6.1-terra offered, no shutdown date announced' in l for l in ok)
    assert any('shape gpt-6.1-terra' in l and 'reasoning_effort none; temperature sent' in l for l in ok)
    assert any('shape gpt-6.1-sol' in l and 'WARNING: no temperature sent' in l for l in ok)   # said, not silent
    assert chat_calls == 0                                                       # before any paid call
    (tmp_path/'check_output.txt').write_text(new.stdout + new.stderr)


def test_check_warns_of_a_shutdown_before_the_runs_end_and_skips_an_unreachable_endpoint(tmp_path):
    roles = dict(teacher='m', referee='m', generator='m', judge='m', student='m')
    with serve() as srv:
        srv.today(date='2026-12-07')
        cfg = parse_config(dict(models={'m': dict(backend='openai', model='gpt-5-mini', base_url=srv.base_url, batch_api=True)},
                                roles=roles))   # up to 16 days with 24 h batch windows
        (name, fn), = endpoint_checks(cfg, 3, progress=print)
        assert name == 'model m' and 'WARNING: it shuts down on 2026-12-11, before the run may end' in fn()
    lines = []
    cfg = parse_config(dict(models={'m': dict(backend='openai', model='gpt-6.1-sol', base_url='http://127.0.0.1:9/v1')},
                            roles=roles))
    assert endpoint_checks(cfg, 1, progress=lines.append) == []
    assert len(lines) == 1 and 'http://127.0.0.1:9/v1: cannot connect' in lines[0] and 'offline checks go on' in lines[0]


def spec(srv, model: str, **kw) -> ModelSpec:
    return ModelSpec(backend='openai', model=model, base_url=srv.base_url, max_retries=1, concurrency=8, **kw)


def test_an_unknown_reasoning_model_learns_its_shape_from_its_first_refusals(tmp_path):
    "The issue's `gpt-6-luna` case for a name the table does not know: one request teaches the shape, for the run."
    reqs = [ChatRequest(f'k{i}', [{'role': 'user', 'content': f'question {i}'}], temperature=0.7, max_tokens=64)
            for i in range(10)]
    with serve() as srv:
        srv.today(catalog={**TODAY_CATALOG, 'gpt-7-nova': _reasoning(('low', 'medium', 'high'))})
        with pytest.warns(UserWarning, match='max_tokens refused'):
            with make_client(spec(srv, 'gpt-7-nova'), role='teacher', cache_dir=tmp_path/'cache',
                             usage_log=tmp_path/'usage.jsonl') as c:
                out = c.run(reqs)
        # 1 refused for max_tokens, 1 for its temperature, the first reply cut by its 300 reasoning tokens (billed),
        # then every reply with the raised headroom
        assert [r.status for r in out] == ['done']*10 and out[3].text == 'Answer to: question 3'
        assert srv.refused == {'unsupported_parameter': 1, 'unsupported_value': 1} and srv.n_chat == 13
        learned = json.loads((tmp_path/'cache'/'request_shapes.json').read_text())[f'{srv.base_url} gpt-7-nova']
        assert learned['token_param'] == 'max_completion_tokens' and learned['drop'] == ['temperature']
        assert learned['headroom'] == 1024 and any('temperature 0.7 refused' in n for n in learned['notes'])
        # the next stage of the run: the learned shape is used at once, and the cache answers what was paid for
        with make_client(spec(srv, 'gpt-7-nova'), role='teacher', cache_dir=tmp_path/'cache') as c:
            again = c.run(reqs + [ChatRequest('new', [{'role': 'user', 'content': 'new'}], 0.7, 64)])
        assert [r.cached for r in again] == [True]*10 + [False] and srv.n_chat == 14 and sum(srv.refused.values()) == 2
    usage = read_log(tmp_path/'usage.jsonl')
    assert sum(e.get('reasoning_tokens', 0) for e in usage) == 64 + 10*300       # the cut reply spent all 64
    assert sum(e.get('length_retries', 0) for e in usage) == 1 and sum(e['calls'] for e in usage) == 11
    run = RunDir(tmp_path)
    cfg = parse_config(dict(models={'m': dict(backend='openai', model='gpt-7-nova', base_url=srv.base_url)},
                            roles=dict(teacher='m', referee='m', generator='m', judge='m', student='m')))
    shapes = request_shapes(cfg, run)                                             # what the manifest records
    assert shapes['m']['family'] is None and shapes['m']['learned']['drop'] == ['temperature']


def test_the_shipped_cast_sends_nothing_refused_and_keeps_the_papers_temperatures(tmp_path):
    cfg = load_config(ROOT/'configs'/'paper.yaml')
    seen = []
    with serve(lambda b: (seen.append(b), 'ok')[1]) as srv:
        srv.today()
        for name, role in (('gpt-6.1-terra', 'teacher'), ('gpt-6.1-sol', 'judge')):
            s = cfg.models[name].model_copy(update={'base_url': srv.base_url, 'batch_api': False, 'api_key_env': None})
            with make_client(s, role=role, cache_dir=tmp_path, usage_log=tmp_path/'usage.jsonl') as c:
                out = c.run([ChatRequest(f'{role}{i}', [{'role': 'user', 'content': f'q{i}'}], 0.7, 256) for i in range(4)])
            assert [r.status for r in out] == ['done']*4
        assert sum(srv.refused.values()) == 0 and srv.n_chat == 8
    terra, sol = seen[0], seen[-1]
    assert terra['temperature'] == 0.7 and terra['reasoning_effort'] == 'none' and terra['max_completion_tokens'] == 256
    assert 'temperature' not in sol and sol['reasoning_effort'] == 'low' and sol['max_completion_tokens'] == 256 + 2048
    usage = read_log(tmp_path/'usage.jsonl')
    assert [e.get('reasoning_tokens', 0) for e in usage] == [0]*4 + [64]*4      # 'low' spends 64 in the stand-in


def test_a_reply_cut_by_reasoning_is_retried_once_then_failed_never_cached(tmp_path):
    with serve() as srv:
        srv.today()
        s = spec(srv, 'gpt-6.1-sol', reasoning_effort='high', reasoning_headroom=0, max_reasoning_headroom=512,
                 price_in_per_mtok=2.0, price_out_per_mtok=10.0)
        budget = Budget(1.0)
        with make_client(s, role='judge', cache_dir=tmp_path, usage_log=tmp_path/'usage.jsonl', budget=budget) as c:
            res, = c.run([ChatRequest('k', [{'role': 'user', 'content': 'review this'}], 0.0, 64)])
        assert res.status == 'failed' and 'cut at length after 576 reasoning tokens' in res.error and res.text == ''
        assert srv.n_chat == 2                                       # 64 + 0, then 64 + 512: both spent on reasoning
        with make_client(s, role='judge', cache_dir=tmp_path) as c:
            assert c.cache.get_many([c.key(ChatRequest('k', [{'role': 'user', 'content': 'review this'}], 0.0, 64))]) == {}
    usage = read_log(tmp_path/'usage.jsonl')
    assert sum(e['calls'] for e in usage) == 2 and sum(e.get('reasoning_tokens', 0) for e in usage) == 64 + 576
    assert sum(e['failures'] for e in usage) == 2 and sum(e.get('length_retries', 0) for e in usage) == 1   # both calls: no answer
    paid = sum(e['cost_usd'] for e in usage)
    assert abs(paid - budget.spent) < 1e-9 and paid > 0                         # both cut replies are priced and counted


def test_table_shapes_without_headroom_stay_as_before(tmp_path):
    "Classic families and forced shapes are unchanged; reasoning families get their headroom."
    from lion_nb.cache import request_shape
    assert request_shape(ModelSpec(backend='openai', model='gpt-4o-mini')).headroom == 0
    assert request_shape(ModelSpec(backend='openai', model='o3')).headroom == DEFAULT_HEADROOM


def test_the_issues_gpt_6_luna_answers_are_no_longer_refused(tmp_path):
    "The issue's `lion_nb answer --model gpt-6-luna`: 10 of 10 refused for 'max_tokens' before; now the table shapes them."
    with serve() as srv:
        srv.today()
        with make_client(spec(srv, 'gpt-6-luna'), role='teacher', cache_dir=tmp_path) as c:
            out = c.run([ChatRequest(f'k{i}', [{'role': 'user', 'content': f'q{i}'}], 0.7, 64) for i in range(10)])
        assert [r.status for r in out] == ['done']*10 and sum(srv.refused.values()) == 0 and srv.n_chat == 10
        assert {r.reasoning_tokens for r in out} == {300}               # it reasons by default, inside the headroom
