"""The Batch API within an organisation's queue (issue 25 item 5) and cached prompt tokens (item 6), against the
stand-in (`lion_nb.testing`) with its enqueued-token limit and prefix cache on, through the real `openai` client.

- batches go in waves that keep the enqueued input tokens under `batch_queue_tokens`;
- a batch the queue refuses (`token_limit_exceeded`, OpenAI's failed-batch shape) is resubmitted, never "no result";
- after a crash, our batch is found on any page of the organisation's batch list, not only the first 100;
- `lion_nb answer` through the Batch API, killed between two waves (and with a wave running), resumes without
  submitting a batch twice or asking any request twice;
- cached prompt tokens are read from the usage, priced at the cached rate and shown in the usage table.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import openai
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import prompt_tokens_of, request_key, serve  # noqa: E402
from lion_fixtures import wait_until as _wait_until  # noqa: E402

from lion_nb.batch import BatchRunner
from lion_nb.cache import request_body
from lion_nb.core import Answer, Instruction, ModelSpec, read_json, read_log, user_message, write_jsonl
from lion_nb.llm import ChatRequest, cost_usd, make_client, summarise_usage

os.environ.setdefault('TQDM_DISABLE', '1')
ROOT = Path(__file__).resolve().parents[1]
LION = [sys.executable, '-c', 'import sys; from lion_nb.cli import main; sys.exit(main())']


def spec_for(srv, **kw) -> ModelSpec:
    return ModelSpec(**{'backend': 'openai', 'model': 'fake-teacher', 'base_url': srv.base_url, 'batch_api': True,
                        'concurrency': 4, 'timeout_s': 5, 'max_retries': 3, **kw})


def reqs(n, prefix='q'):
    "Requests of about 30 input tokens each (the server counts 25-26)."
    return [ChatRequest(f'{prefix}{i}', [{'role': 'user', 'content': f'{prefix} number {i} ' + 'x' * 80}], max_tokens=16)
            for i in range(n)]


def skey(spec, req) -> str:
    "The key the server counts this request under."
    return request_key(request_body(spec.model, req, spec.structured_output))


def wait_until(cond, proc=None):
    "`lion_fixtures.wait_until` with a minute's patience: a wave waits on the stand-in's queue."
    return _wait_until(cond, 60.0, proc)


def server_tokens(srv, model) -> int:
    "Input tokens of every batch the server accepted for `model`, as it counts them."
    return sum(b['_tokens'] for b in srv.batches.values() if b.get('_model') == model and '_refused' not in b)


# ---------------------------------------------------------------- waves

def test_batches_go_in_waves_under_the_queue_limit(tmp_path):
    """24 requests in batches of 4 (about 100 input tokens each) under a queue of 250 tokens: at most 2 batches
    enqueued at once, so at least 3 waves; nothing refused, every request answered once."""
    with serve(batch_queue_tokens=250) as srv:
        spec = spec_for(srv, batch_max_requests=4, batch_queue_tokens=250)
        rs = reqs(24)
        out = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01).run(rs)
        assert all(r.status == 'done' for r in out) and [r.key for r in out] == [r.key for r in rs]
        assert srv.queue_refused == 0 and srv.batches_created == 6
        assert srv.queue_peak[spec.model] <= 250
        assert server_tokens(srv, spec.model) >= 2 * 250 + 1          # more than two queues' worth: >= 3 waves
        assert all(srv.batch_counts[skey(spec, r)] == 1 for r in rs)


def test_a_batch_holds_at_most_half_the_queue(tmp_path):
    """Without a request cap, batches are cut by input tokens: at most half the queue each (by our estimate, which the
    stand-in's count stays under), so two run at once and one always fits alone."""
    with serve(batch_queue_tokens=250) as srv:
        spec = spec_for(srv, batch_queue_tokens=250)
        out = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01).run(reqs(24))
        assert all(r.status == 'done' for r in out) and srv.queue_refused == 0
        sizes = [b['_tokens'] for b in srv.batches.values()]
        assert len(sizes) >= 6 and max(sizes) <= 125 and srv.queue_peak[spec.model] <= 250


def test_without_waves_the_queue_refuses_in_openais_shape(tmp_path):
    "The stand-in refuses what OpenAI refuses: a batch over the enqueued-token limit fails with token_limit_exceeded."
    with serve(batch_queue_tokens=50, batch_gate=set()) as srv:
        sdk = openai.OpenAI(base_url=srv.base_url, api_key='x')
        line = {'custom_id': 'a', 'method': 'POST', 'url': '/v1/chat/completions',
                'body': {'model': 'gpt-x', 'messages': [{'role': 'user', 'content': 'y' * 400}]}}   # 100 tokens
        f = sdk.files.create(file=('in.jsonl', (json.dumps(line) + '\n').encode(), 'application/jsonl'), purpose='batch')
        b = sdk.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')
        assert b.status == 'validating'
        b = sdk.batches.retrieve(b.id)
        assert b.status == 'failed' and b.output_file_id is None and b.failed_at
        e = b.errors.data[0]
        assert (e.code, e.line, e.param) == ('token_limit_exceeded', None, None)
        assert e.message.startswith('Enqueued token limit reached for gpt-x in organization') and 'Limit: 50 ' in e.message


def test_a_batch_the_queue_refuses_is_resubmitted_not_lost(tmp_path):
    """The client does not know the limit (batch_queue_tokens unset): the queue refuses the batches over it; each is
    resubmitted from its uploaded file once one of ours has ended, and every request ends answered, once, and paid
    once. (Before issue 25 its requests came back failed: 'no result in the batch output'.)"""
    with serve(batch_queue_tokens=250) as srv:
        spec = spec_for(srv, batch_max_requests=4, price_in_per_mtok=1.0, price_out_per_mtok=2.0)
        rs = reqs(24)
        c = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01, usage_log=tmp_path/'u.jsonl')
        out = c.run(rs)
        assert all(r.status == 'done' for r in out), [r.error for r in out if r.status != 'done'][:2]
        assert srv.queue_refused >= 1 and srv.batches_created == 6 + srv.queue_refused
        assert srv.queue_peak[spec.model] <= 250
        assert all(srv.batch_counts[skey(spec, r)] == 1 for r in rs)
        assert srv.files_uploaded == 6                               # a resubmission reuses its uploaded file
        records = [read_json(p) for p in (tmp_path/'batches').glob('*.collected.json')]
        assert len(records) == 6 and sum(len(r.get('refused', [])) for r in records) == srv.queue_refused
        log = read_log(tmp_path/'u.jsonl')
        assert sum(e['calls'] for e in log) == 24 and sum(e['failures'] for e in log) == 0


def test_the_queue_full_of_other_batches_stops_cleanly_and_a_rerun_resubmits(tmp_path):
    """Refused with none of ours in the queue (other batches of the organisation fill it): the run waits, then
    stops with a clear error after max_retries refusals; a re-run, once the queue has room, submits the refused
    batch again and collects it."""
    from lion_nb.core import LionError
    with serve(batch_queue_tokens=10) as srv:          # smaller than any of our batches
        spec = spec_for(srv, max_retries=2)
        with pytest.raises(LionError, match='token_limit_exceeded'):
            make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01).run(reqs(3))
        assert srv.queue_refused == 3 and srv.files_uploaded == 1
        srv.batch_queue_tokens = None                  # the queue empties
        out = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01).run(reqs(3))
        assert all(r.status == 'done' for r in out) and srv.files_uploaded == 1 and srv.batches_created == 4


# ---------------------------------------------------------------- finding our batch after a crash

def test_resume_finds_its_batch_behind_a_hundred_newer_ones(tmp_path):
    """A crash between the server creating our batch and our writing its id: the re-run must find it by its
    lion_job metadata even when 250 newer batches of the organisation list before it (the list pages by 100).
    Reading only the first page, as before issue 25, it submitted the batch a second time."""
    with serve(batch_gate=set()) as srv:
        spec = spec_for(srv)
        c = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01)
        rs = reqs(3)
        keys, hits, todo = c._lookup(rs)
        runner = BatchRunner(c)
        [job], unsent = runner.plan(todo)                      # the plan is on disk
        sdk = openai.OpenAI(base_url=srv.base_url, api_key='x')
        f = sdk.files.create(file=('in.jsonl', job['data'], 'application/jsonl'), purpose='batch')
        job['state']['input_file_id'] = f.id
        from lion_nb.core import write_json
        write_json(job['path'], job['state'])                  # uploaded and recorded ...
        ours = sdk.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h',
                                  metadata={'lion_job': job['state']['job']})   # ... created, then the crash
        other = sdk.files.create(file=('o.jsonl', b'{}\n', 'application/jsonl'), purpose='batch')
        for _ in range(250): sdk.batches.create(input_file_id=other.id, endpoint='/v1/chat/completions', completion_window='24h')
        first = sdk.batches.list(limit=100)
        assert len(first.data) == 100 and first.has_more and ours.id not in [b.id for b in first.data]
        srv.batch_gate = None
        out = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01).run(rs)
        assert all(r.status == 'done' for r in out)
        assert srv.batches_created == 251, 'the batch was not submitted a second time'
        assert read_json(next((tmp_path/'batches').glob('*.collected.json')))['batch_id'] == ours.id
        assert srv.paths['GET /v1/batches'] >= 1 + 3          # our test's listing, then three pages


# ---------------------------------------------------------------- kill between waves (lion_nb answer, Batch API)

def teacher_config(path, srv, limit) -> Path:
    spec = dict(backend='openai', model='fake-teacher', base_url=srv.base_url, batch_api=True, batch_max_requests=4,
                batch_queue_tokens=limit, max_retries=3, timeout_s=5, price_in_per_mtok=1.0, price_out_per_mtok=2.0)
    cfg = dict(name='waves', seed=0, models={'t': spec, 's': dict(backend='hf', model='/nonexistent/student')},
               roles=dict(teacher='t', referee='t', generator='t', judge='t', student='s'),
               sampling=dict(max_new_tokens=16))
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def teacher_cmd(cfg, tmp_path) -> list[str]:
    return LION + ['answer', '--role', 'teacher', '--config', str(cfg), '--pool', str(tmp_path/'pool.jsonl'),
                   '--out', str(tmp_path/'answers.jsonl'), '--cache-dir', str(tmp_path/'cache'),
                   '--usage-log', str(tmp_path/'usage.jsonl'), '--batch-poll-s', '0.02']


@pytest.mark.parametrize('kill_at', ['between_waves', 'with_a_wave_running'])
def test_answer_killed_between_waves_resumes_without_resubmitting(tmp_path, kill_at):
    """`lion_nb answer` (the teacher pass) through the Batch API: 24 instructions, batches of 4, a queue with room
    for two batches (by our estimate), so at least three waves. kill -9 after wave 1 is collected while wave 2's
    file is being uploaded (between waves), or with wave 2 submitted and running; the re-run submits only what
    was never submitted, asks no request twice, keeps every wave under the limit, and ends with every answer."""
    from lion_nb.batch import batch_input_tokens
    from lion_nb.llm import answer_requests
    n = 24
    pool = [Instruction(id=f'i{k:02d}', instruction=f'Explain item {k:02d} ' + 'in detail ' * 6) for k in range(n)]
    write_jsonl(tmp_path/'pool.jsonl', pool)
    est = max(batch_input_tokens(r) for r in answer_requests(pool, role='teacher', temperature=0.7, max_tokens=16))
    limit = 2 * 4 * est + 2                     # two batches of 4 fit, a third does not
    folder = tmp_path/'cache'/'batches'
    collected = lambda: len(list(folder.glob('*.collected.json')))
    with serve(batch_queue_tokens=limit, batch_gate=set()) as srv:
        cfg = teacher_config(tmp_path/'cfg.yaml', srv, limit)
        p = subprocess.Popen(teacher_cmd(cfg, tmp_path), cwd=ROOT, env={**os.environ, 'TQDM_DISABLE': '1'},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: srv.batches_created >= 1, proc=p)
        time.sleep(0.5)                                            # wave 1: what the queue takes, and no more
        w1 = srv.batches_created
        assert 1 <= w1 <= 2 and srv.queue_refused == 0
        if kill_at == 'between_waves':
            # wave 1 ends; the next wave's upload is held 2 s, and the kill lands inside it. The next wave may start
            # as soon as one of wave 1's batches is collected (the client uploads before collecting the other),
            # so wait for the upload, not for all of wave 1 to be collected
            srv.upload_latency_s, srv.batch_gate = 2.0, set(range(1, w1 + 1))
            wait_until(lambda: collected() >= 1 and srv.files_uploaded == w1 + 1, proc=p)
        else:
            srv.batch_gate = set(range(1, w1 + 1))                 # wave 1 ends; wave 2 runs, and does not end
            wait_until(lambda: collected() == w1 and srv.batches_created == 2 * w1, proc=p)
            time.sleep(0.3)
        p.kill()                                                   # SIGKILL
        p.wait()
        assert srv.batches_created == (w1 if kill_at == 'between_waves' else 2 * w1) < 6
        srv.upload_latency_s, srv.batch_gate = 0.0, None
        r = subprocess.run(teacher_cmd(cfg, tmp_path), cwd=ROOT, env={**os.environ, 'TQDM_DISABLE': '1'},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert srv.batches_created == 6, 'no batch was submitted twice'
        assert srv.queue_refused == 0 and srv.queue_peak['fake-teacher'] <= limit
        assert sum(srv.batch_counts.values()) == n and all(v == 1 for v in srv.batch_counts.values())
    answers = {a.id: a for a in read_log(tmp_path/'answers.jsonl', Answer)}
    assert len(answers) == n and all(a.status == 'done' and 'Explain item' in a.output for a in answers.values())
    assert collected() == 6 and not [f for f in folder.glob('*.json') if 'collected' not in f.name]
    usage = read_log(tmp_path/'usage.jsonl')
    assert sum(e['calls'] for e in usage) == n                  # every request paid once, none thrown away


# ---------------------------------------------------------------- cached prompt tokens

RULES = 'Judge the two answers on helpfulness, relevance, accuracy and level of detail. ' * 60   # ~1,200 tokens


def test_cached_prompt_tokens_are_read_priced_and_tabled(tmp_path):
    """Judge-like prompts that share ~1,200 tokens of fixed instructions before their answers: after the first, the
    stand-in's prefix cache reports 1,152 cached tokens each (OpenAI's rule: from 1,024 on, in steps of 128). The
    client reads them, prices them at the cached rate, and the usage table shows them and the saving."""
    spec_kw = dict(price_in_per_mtok=1.0, price_out_per_mtok=2.0, price_cached_in_per_mtok=0.1, batch_api=False,
                   concurrency=1)
    rs = [ChatRequest(f'r{i}', [{'role': 'user', 'content': RULES + f'\n\nAnswer 1: yes {i}\nAnswer 2: no {i}'}],
                      max_tokens=8) for i in range(4)]
    with serve() as srv:
        spec = spec_for(srv, **spec_kw)
        c = make_client(spec, role='judge', cache_dir=tmp_path/'c', usage_log=tmp_path/'u.jsonl')
        est = c.estimate(rs)
        out = c.run(rs)
    assert all(r.status == 'done' for r in out)
    assert [r.cached_tokens for r in out] == [0, 1152, 1152, 1152]
    assert est['cached_tokens'] == 3 * 1152 and est['cached_saving_usd'] > 0      # the dry run foresaw it
    log = read_log(tmp_path/'u.jsonl')
    pt, ct = sum(e['prompt_tokens'] for e in log), sum(e['completion_tokens'] for e in log)
    paid = sum(e['cost_usd'] for e in log)
    assert abs(paid - cost_usd(spec, pt, ct, cached_tokens=3 * 1152)) < 1e-12
    assert abs(cost_usd(spec, pt, ct) - paid - 3 * 1152 * 0.9 / 1e6) < 1e-12       # the discount, exactly
    t = summarise_usage(tmp_path/'u.jsonl')
    total = t.iloc[-1]
    assert (total['cached_tokens'], total['reasoning_tokens']) == (3 * 1152, 0)
    assert abs(total['cached_saving_usd'] - 3 * 1152 * 0.9 / 1e6) < 1e-6       # the table rounds to 6 places


def test_cached_tokens_in_batch_results_are_priced_at_the_batch_cached_rate(tmp_path):
    "The Batch API's results carry cached tokens too: priced at half the cached rate, the saving logged."
    rs = [ChatRequest(f'r{i}', [{'role': 'user', 'content': RULES + f' question {i}'}], max_tokens=8) for i in range(3)]
    with serve() as srv:
        spec = spec_for(srv, price_in_per_mtok=1.0, price_out_per_mtok=2.0, price_cached_in_per_mtok=0.1)
        out = make_client(spec, role='judge', cache_dir=tmp_path, usage_log=tmp_path/'u.jsonl', batch_poll_s=0.01).run(rs)
    assert sorted(r.cached_tokens for r in out) == [0, 1152, 1152]
    [e] = read_log(tmp_path/'u.jsonl')
    assert e['batch'] and e['cached_tokens'] == 2 * 1152
    assert abs(e['cost_usd'] - cost_usd(spec, e['prompt_tokens'], e['completion_tokens'], True, 2 * 1152)) < 1e-12
    assert abs(e['cached_saving_usd'] - 2 * 1152 * 0.9 / 2 / 1e6) < 1e-12
