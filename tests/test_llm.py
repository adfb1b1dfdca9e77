"""The LLM layer against a real local HTTP server (`lion_nb.testing`) with the real `openai` client,
and the student path on a tiny random Llama built offline."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import request_key, serve  # noqa: E402
from lion_fixtures import wait_until  # noqa: E402
from lion_nb.clients import served_weights  # noqa: E402

from lion_nb.core import Answer, Instruction, ModelSpec, read_log, write_jsonl
from lion_nb.llm import (Budget, BudgetExceeded, ChatRequest, answer_cli, answer_pool, answer_requests, make_client, request_body,
                         spent_usd, summarise_usage)

os.environ.setdefault('TQDM_DISABLE', '1')
ROOT = Path(__file__).resolve().parents[1]


def spec_for(srv, **kw) -> ModelSpec:
    return ModelSpec(**{'backend': 'openai', 'model': 'fake-teacher', 'base_url': srv.base_url, 'concurrency': 4, 'timeout_s': 5, **kw})


def reqs(n, prefix='q'):
    return [ChatRequest(f'{prefix}{i}', [{'role': 'user', 'content': f'{prefix} number {i}'}], max_tokens=32) for i in range(n)]


def skey(spec, req) -> str:
    "The key the server counts this request under."
    return request_key(request_body(spec.model, req, spec.structured_output))


def pool(n) -> list[Instruction]:
    return [Instruction(id=f'i{k:03d}', instruction=f'Explain item {k}.', input='with input' if k % 3 == 0 else '') for k in range(n)]


def cli_proc(*args) -> subprocess.Popen:
    "`lion_nb ...` in a subprocess (so that it can be killed with SIGKILL)."
    code = 'import sys; from lion_nb.cli import main; sys.exit(main(sys.argv[1:]))'
    env = {**os.environ, 'TQDM_DISABLE': '1'}
    return subprocess.Popen([sys.executable, '-c', code, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ---------------------------------------------------------------- retries

def test_retries_429_500_timeout(tmp_path):
    "Each fault costs one retry; Retry-After is honoured; results are correct and in input order."
    with serve(schedule={1: '429', 2: '500', 3: 'hang', 4: '503', 5: 'reset', 6: 'badjson'}, retry_after_s=1, hang_s=10) as srv:
        spec = spec_for(srv, concurrency=1, timeout_s=0.5, max_retries=6)
        c = make_client(spec, role='teacher', cache_dir=tmp_path/'cache', retry_base_s=0.02)
        rs = reqs(3); t0 = time.monotonic()
        out = c.run(rs)
        dt = time.monotonic() - t0
    assert [r.key for r in out] == ['q0', 'q1', 'q2'] and all(r.status == 'done' for r in out)
    assert [r.text for r in out] == [f'Answer to: q number {i}' for i in range(3)]
    # q0: 429, 500, timeout, 503, reset, broken JSON body, then success: 7 requests at the server
    assert srv.counts[skey(spec, rs[0])] == 7 and srv.counts[skey(spec, rs[1])] == 1
    assert c.stats['retries'] == 6 and c.stats['failures'] == 0
    assert dt >= 1.0 + 0.5   # waited the Retry-After second and the 0.5 s timeout


def test_retry_after_ms_header(tmp_path):
    with serve(schedule={1: '429'}, retry_after_s=30, retry_after_ms=100) as srv:
        c = make_client(spec_for(srv), role='teacher', cache_dir=tmp_path)
        t0 = time.monotonic(); out = c.run(reqs(1))
        assert out[0].status == 'done' and time.monotonic() - t0 < 5   # 100 ms, not 30 s


def test_bounded_retries_then_failed_and_not_cached(tmp_path):
    "A request that keeps failing is recorded as failed with its reason, after max_retries retries; never cached."
    with serve(fault_fn=lambda body, n, seen: '500' if 'number 1' in body['messages'][0]['content'] else None) as srv:
        spec = spec_for(srv, max_retries=2)
        c = make_client(spec, role='teacher', cache_dir=tmp_path, usage_log=tmp_path/'usage.jsonl', retry_base_s=0.01)
        rs = reqs(3); out = c.run(rs)
        assert [r.status for r in out] == ['done', 'failed', 'done']
        assert 'HTTP 500' in out[1].error and '3 attempt' in out[1].error
        assert srv.counts[skey(spec, rs[1])] == 3
        srv.fault_fn = None            # the endpoint recovers: a re-run retries only the failure
        out2 = make_client(spec, role='teacher', cache_dir=tmp_path).run(rs)
        assert all(r.status == 'done' for r in out2) and [r.cached for r in out2] == [True, False, True]
        assert srv.counts[skey(spec, rs[1])] == 4 and srv.counts[skey(spec, rs[0])] == 1
    t = summarise_usage(tmp_path/'usage.jsonl')
    assert int(t.iloc[-1]['failures']) == 1 and int(t.iloc[-1]['retries']) == 2
    assert [r['error'][:8] for r in read_log(tmp_path/'usage.jsonl') if r.get('failures')] == ['HTTP 500']


def test_client_rejects_non_retryable_at_once(tmp_path):
    with serve() as srv:
        c = make_client(spec_for(srv, base_url=srv.base_url + '/nope'), role='teacher', cache_dir=tmp_path)
        out = c.run(reqs(1))
        assert out[0].status == 'failed' and 'HTTP 404' in out[0].error and srv.n_chat == 0


# ---------------------------------------------------------------- cache

def test_second_run_issues_zero_requests(tmp_path):
    with serve() as srv:
        spec = spec_for(srv)
        out1 = make_client(spec, role='teacher', cache_dir=tmp_path, usage_log=tmp_path/'u.jsonl').run(reqs(20))
        n = srv.n_chat
        assert n == 20 and all(r.status == 'done' and not r.cached for r in out1)
        c2 = make_client(spec, role='teacher', cache_dir=tmp_path, usage_log=tmp_path/'u.jsonl')   # a fresh client, as after a restart
        out2 = c2.run(reqs(20))
        assert srv.n_chat == n, 'the second run must not reach the server'
        assert [r.text for r in out2] == [r.text for r in out1] and all(r.cached for r in out2)
        assert c2.stats['cache_hits'] == 20 and c2.estimate(reqs(20))['calls'] == 0
        # a different sampling parameter or endpoint is a different request
        make_client(spec, role='teacher', cache_dir=tmp_path).run([ChatRequest('x', reqs(1)[0].messages, temperature=0.7, max_tokens=32, seed=1)])
        assert srv.n_chat == n + 1
    t = summarise_usage(tmp_path/'u.jsonl')
    assert int(t.iloc[-1]['calls']) == 20 and int(t.iloc[-1]['cache_hits']) == 20


def test_duplicates_in_one_run_are_sent_once(tmp_path):
    with serve() as srv:
        rs = reqs(3) + [ChatRequest('again', reqs(1)[0].messages, max_tokens=32)]
        out = make_client(spec_for(srv), role='teacher', cache_dir=tmp_path).run(rs)
        assert srv.n_chat == 3 and out[3].key == 'again' and out[3].text == out[0].text


def test_kill9_then_rerun_repeats_no_finished_request(tmp_path):
    "kill -9 `lion_nb answer` mid-run; the re-run finishes the pool without repeating a finished request."
    n = 30
    write_jsonl(tmp_path/'pool.jsonl', pool(n))
    out = tmp_path/'answers.jsonl'
    args = ['answer', '--role', 'teacher', '--pool', tmp_path/'pool.jsonl', '--out', out, '--model', 'fake-teacher',
            '--concurrency', '2', '--max-tokens', '32']
    with serve(latency_s=0.1) as srv:
        p = cli_proc(*args, '--base-url', srv.base_url)
        wait_until(lambda: out.exists() and out.read_text().count('\n') >= 8, proc=p)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        before = {a.id for a in read_log(out, Answer) if a.status == 'done'}
        assert 8 <= len(before) < n, len(before)
        n_before = srv.n_chat
        assert answer_cli([str(x) for x in args[1:]] + ['--base-url', srv.base_url]) == 0
        answers = read_log(out, Answer)
        done = {a.id for a in answers if a.status == 'done'}
        assert done == {i.id for i in pool(n)}
        assert len(answers) == n, 'every instruction appears once in the output'
        # the requests whose answers were on disk before the kill were never sent again
        spec = ModelSpec(backend='openai', model='fake-teacher')
        for r in answer_requests([i for i in pool(n) if i.id in before], role='teacher', temperature=0.0, max_tokens=32):
            assert srv.counts[skey(spec, r)] == 1, r.key
        assert srv.n_chat - n_before <= n - len(before)   # the re-run sent only what was missing
        assert srv.n_chat <= n + 2                        # at most the 2 in flight at the kill were repeated
        # the input field reached the model
        a0 = next(a for a in answers if a.id == 'i000')
        assert a0.output == 'Answer to: Explain item 0.\n\nwith input' and a0.prov.role == 'teacher'


# ---------------------------------------------------------------- budget, dry run

def test_budget_cap_stops_before_exceeding(tmp_path):
    price = dict(price_in_per_mtok=1000.0, price_out_per_mtok=2000.0)   # worst case ~$0.073, actual ~$0.015 per request
    usage, limit = tmp_path/'usage.jsonl', 0.15
    with serve() as srv:
        spec = spec_for(srv, concurrency=2, **price)
        budget = Budget.from_usage_log(limit, usage)
        c = make_client(spec, role='teacher', stage='imitation', iteration=1, cache_dir=tmp_path/'cache', usage_log=usage, budget=budget)
        est = c.estimate(reqs(20))
        assert est['calls'] == 20 and est['worst_case_usd'] > limit
        seen = []
        with pytest.raises(BudgetExceeded, match='budget cap'):
            c.run(reqs(20), on_results=seen.extend)
        assert 0 < srv.n_chat < 20 and len(seen) == srv.n_chat          # in-flight ones finished and were delivered
        assert 0 < spent_usd(usage) <= limit and budget.reserved < 1e-12
        # the spend is persisted in the usage log: a new budget starts from it and refuses at once, sending nothing
        again = Budget.from_usage_log(budget.spent + 0.05, usage)
        assert abs(again.spent - budget.spent) < 1e-9
        n = srv.n_chat
        c2 = make_client(spec, role='teacher', cache_dir=tmp_path/'cache', usage_log=usage, budget=again)
        with pytest.raises(BudgetExceeded):
            c2.run(reqs(20))
        assert srv.n_chat == n
        # what was paid for is cached and free
        assert all(r.cached for r in c2.run(reqs(20)[:1]))
    t = summarise_usage(usage)
    row = t[(t['stage'] == 'imitation') & (t['iteration'] == '1')]
    assert len(row) == 1 and int(row.iloc[0]['calls']) == n and abs(row.iloc[0]['cost_usd'] - budget.spent) < 1e-6


def test_dry_run_cli_sends_nothing(tmp_path, capsys):
    write_jsonl(tmp_path/'pool.jsonl', pool(5))
    with serve() as srv:
        rc = answer_cli(['--role', 'teacher', '--pool', str(tmp_path/'pool.jsonl'), '--out', str(tmp_path/'a.jsonl'),
                         '--base-url', srv.base_url, '--model', 'm', '--max-tokens', '100', '--dry-run'])
        assert rc == 0 and srv.n_chat == 0 and not (tmp_path/'a.jsonl').exists()
    est = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert est['calls'] == 5 and est['completion_tokens'] == 500


def test_structured_output_only_when_supported(tmp_path):
    seen = []
    def reply(body):
        seen.append(body.get('response_format')); return '{"score": 7}'
    rf = {'type': 'json_schema', 'json_schema': {'name': 's', 'schema': {'type': 'object', 'properties': {'score': {'type': 'integer'}}}}}
    with serve(reply) as srv:
        r = ChatRequest('k', [{'role': 'user', 'content': 'rate'}], response_format=rf)
        make_client(spec_for(srv, structured_output=True), role='referee', cache_dir=tmp_path).run([r])
        make_client(spec_for(srv), role='referee', cache_dir=tmp_path).run([r])
    assert seen == [rf, None]


# ---------------------------------------------------------------- Batch API

def _batch_config(path, srv, price=True):
    path.write_text(f"""
models:
  t: {{backend: openai, model: fake-teacher, base_url: "{srv.base_url}", batch_api: true,
       price_in_per_mtok: 10.0, price_out_per_mtok: 20.0}}
roles: {{teacher: t, referee: t, generator: t, judge: t, student: t}}
sampling: {{max_new_tokens: 32}}
""")
    return path


def test_batch_api_round_trip_and_resume_after_crash(tmp_path):
    n = 12
    write_jsonl(tmp_path/'pool.jsonl', pool(n))
    out, batches = tmp_path/'answers.jsonl', tmp_path/'cache'/'batches'
    with serve(batch_polls=10**9, batch_fail_ids=()) as srv:
        cfg = _batch_config(tmp_path/'run.yaml', srv)
        args = ['answer', '--role', 'teacher', '--pool', tmp_path/'pool.jsonl', '--out', out, '--config', cfg, '--batch-poll-s', '0.05']
        p = cli_proc(*args)
        # the batch is created and its id stored; the run is polling: crash it
        wait_until(lambda: srv.batches_created == 1 and any('batch_id' in json.loads(f.read_text()) for f in batches.glob('*.json')), proc=p)
        wait_until(lambda: sum(b['_polls'] for b in srv.batches.values()) >= 2, proc=p)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert not out.exists() or read_log(out) == []
        srv.batch_polls = 0                          # the provider finishes the batch
        assert answer_cli([str(x) for x in args[1:]]) == 0
        assert srv.batches_created == 1 and srv.files_uploaded == 1, 'the re-run resumed the same batch'
        assert srv.n_chat == 0                       # nothing went through the synchronous endpoint
        answers = read_log(out, Answer)
        assert sorted(a.id for a in answers) == [i.id for i in pool(n)] and all(a.status == 'done' for a in answers)
        assert list(batches.glob('*.collected.json')) and not [f for f in batches.glob('*.json') if 'collected' not in f.name]
        # half price in the usage log
        rows = read_log(tmp_path/'usage.jsonl')
        paid = [r for r in rows if r['calls']]
        assert len(paid) == 1 and paid[0]['calls'] == n and paid[0]['batch']   # one event for the collected batch
        r0 = paid[0]
        assert abs(r0['cost_usd'] - (r0['prompt_tokens']*10 + r0['completion_tokens']*20)/1e6/2) < 1e-9
        # everything is cached now: a third run submits nothing
        out.unlink()
        assert answer_cli([str(x) for x in args[1:]]) == 0 and srv.batches_created == 1


def test_batch_results_keep_unicode_line_separators_and_are_stored_as_one_group(tmp_path):
    """An answer holding U+2028, U+0085 or U+001E is one JSONL line of the output file: split on newlines only, as
    str.splitlines() would cut it and fail the whole batch. The batch's results go to the cache in one transaction
    and the usage log as one event."""
    text = 'line one\u2028line two\x85three\x1efour'
    with serve(lambda body: text, batch_polls=0) as srv:
        c = make_client(spec_for(srv, batch_api=True), role='teacher', cache_dir=tmp_path/'cache', usage_log=tmp_path/'u.jsonl',
                        batch_poll_s=0.05)
        groups = []
        out = c.run(reqs(30), on_results=groups.append)
        again = make_client(spec_for(srv, batch_api=True), role='teacher', cache_dir=tmp_path/'cache').run(reqs(30))
    assert [r.text for r in out] == [text]*30 and all(r.status == 'done' for r in out)
    assert [len(g) for g in groups] == [30] and all(r.cached for r in again) and srv.batches_created == 1
    assert [e['calls'] for e in read_log(tmp_path/'u.jsonl')] == [30]


def test_batch_line_failures_are_reported_and_retried(tmp_path):
    with serve() as srv:
        spec = spec_for(srv, batch_api=True)
        rs = reqs(4)
        c = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.01)
        srv.batch_fail_ids = {c.key(rs[2])}
        out = c.run(rs)
        assert [r.status for r in out] == ['done', 'done', 'failed', 'done'] and 'injected' in out[2].error
        srv.batch_fail_ids = set()
        out2 = c.run(rs)
        assert all(r.status == 'done' for r in out2) and srv.batches_created == 2
        assert sum(srv.batch_counts.values()) == 4      # the second batch held only the failed request


# ---------------------------------------------------------------- the student (local HF checkpoint)

def tiny_llama(folder: Path) -> Path:
    "A tiny random Llama with a byte-level BPE tokenizer and a chat template, built offline."
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    specials = ['<pad>', '<s>', '<|im_end|>', '<|im_start|>']
    tk = Tokenizer(models.BPE()); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
    corpus = ['Explain item number one two three.', 'Write a short poem about the sea.', 'user assistant system', 'with input'] * 5
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', bos_token='<s>', eos_token='<|im_end|>')
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder); tok.save_pretrained(folder)
    return folder


def test_student_hf_batched_equals_sequential_cached_and_resumable(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    ckpt = tiny_llama(tmp_path/'ckpt')
    spec = ModelSpec(backend='hf', model=str(ckpt), concurrency=4)
    instrs = [Instruction(id=f's{k}', instruction='Explain item ' + 'one two ' * k, input='with input' if k == 2 else '') for k in range(5)]
    batched = make_client(spec, role='student', cache_dir=tmp_path/'c1')
    seq = make_client(spec, role='student', cache_dir=tmp_path/'c2', batch_size=1)
    a_b = answer_pool(instrs, batched, tmp_path/'b.jsonl', role='student', temperature=0.0, max_tokens=8)
    a_s = answer_pool(instrs, seq, tmp_path/'s.jsonl', role='student', temperature=0.0, max_tokens=8)
    assert [a.output for a in a_b] == [a.output for a in a_s], 'greedy batched generation must equal one-at-a-time'
    assert all(a.status == 'done' and a.finish_reason in ('stop', 'length') for a in a_b)
    assert [a.id for a in read_log(tmp_path/'b.jsonl', Answer)] != [] and len(read_log(tmp_path/'b.jsonl')) == 5
    # a fresh client over the same cache and checkpoint generates nothing
    again = make_client(spec, role='student', cache_dir=tmp_path/'c1')
    res = again.run(answer_requests(instrs, role='student', temperature=0.0, max_tokens=8))
    assert all(r.cached for r in res) and again.model is None
    # the Alpaca template is a different prompt, hence a different cache entry
    alp = make_client(spec, role='student', cache_dir=tmp_path/'c1', template='alpaca')
    assert not any(r.cached for r in alp.run([ChatRequest('x', [{'role': 'user', 'content': 'hi'}], max_tokens=4)]))
    lion = make_client(spec, role='student', cache_dir=tmp_path/'c1', template='lion')      # Lion's layout: a third one
    assert not any(r.cached for r in lion.run([ChatRequest('x', [{'role': 'user', 'content': 'hi'}], max_tokens=4)]))
    assert len({c.endpoint_id() for c in (again, alp, lion)}) == 3
    # a retrained checkpoint (new files) does not reuse the old answers
    time.sleep(0.01); (ckpt/'config.json').write_text((ckpt/'config.json').read_text())
    fresh = make_client(spec, role='student', cache_dir=tmp_path/'c1')
    assert fresh.estimate(answer_requests(instrs, role='student', temperature=0.0, max_tokens=8))['calls'] == 5
    # seeded sampling is reproducible (same seed, same batches -> same text), and differs from greedy somewhere
    two, sampler = instrs[:2], make_client(spec, role='student', cache_dir=tmp_path/'c3')
    sampler.model, sampler.tokenizer, sampler.eos_ids = batched.model, batched.tokenizer, batched.eos_ids   # same weights, no reload
    s1 = answer_pool(two, sampler, tmp_path/'t1.jsonl', role='student', temperature=1.0, max_tokens=8, seed=3)
    s2 = answer_pool(two, sampler, tmp_path/'t2.jsonl', role='student', temperature=1.0, max_tokens=8, seed=4)
    s3 = sampler.run(answer_requests(two, role='student', temperature=1.0, max_tokens=8, seed=3))
    assert all(r.cached for r in s3) and [r.text for r in s3] == [a.output for a in s1]
    sampler.cache = None      # now really regenerate with seed 3: the same text
    assert [r.text for r in sampler.run(answer_requests(two, role='student', temperature=1.0, max_tokens=8, seed=3))] == [a.output for a in s1]
    assert [a.output for a in s1] != [a.output for a in s2] or [a.output for a in s1] != [a.output for a in a_b[:2]]


# ---------------------------------------------------------------- the embedded backend

def test_embedded_backend_uses_ensure_server_lazily_and_caches_across_ports(tmp_path, monkeypatch):
    "backend 'embedded' is the same client at models.ensure_server()'s URL; its cache survives a new port."
    from lion_nb import models
    calls = []
    with serve() as srv1, serve() as srv2:
        urls = iter([srv1.base_url, srv2.base_url])
        monkeypatch.setattr(models, 'ensure_server', lambda *a, **k: calls.append(1) or next(urls))
        spec = ModelSpec(backend='embedded', model=models.TEACHER_NAME)
        c = make_client(spec, role='teacher', cache_dir=tmp_path)
        assert calls == [] and c.estimate(reqs(3))['calls'] == 3          # a dry run starts no server
        assert all(r.status == 'done' for r in c.run(reqs(3))) and calls == [1] and srv1.n_chat == 3
        c2 = make_client(spec, role='teacher', cache_dir=tmp_path)        # the server restarted on another port
        assert all(r.cached for r in c2.run(reqs(3))) and srv2.n_chat == 0
        with pytest.raises(Exception, match="backend 'hf'"):
            make_client(ModelSpec(backend='embedded', model=models.STUDENT_NAME), role='student').run(reqs(1))


def test_run_works_inside_a_running_event_loop(tmp_path):
    "Jupyter and papermill run cells inside an event loop; run() must still work there."
    import asyncio
    with serve() as srv:
        c = make_client(spec_for(srv), role='teacher', cache_dir=tmp_path)
        async def cell(): return c.run(reqs(3))
        out = asyncio.run(cell())
        assert [r.status for r in out] == ['done']*3 and srv.n_chat == 3


def test_api_key_is_sent_but_never_stored(tmp_path, monkeypatch):
    secret = 'sk-test-SECRET-0123456789'
    monkeypatch.setenv('LION_TEST_API_KEY', secret)
    write_jsonl(tmp_path/'pool.jsonl', pool(3))
    with serve() as srv:
        spec = spec_for(srv, api_key_env='LION_TEST_API_KEY')
        make_client(spec, role='teacher', cache_dir=tmp_path/'cache', usage_log=tmp_path/'usage.jsonl').run(reqs(2))
        assert srv.auth[f'Bearer {secret}'] == 2
        assert answer_cli(['--role', 'teacher', '--pool', str(tmp_path/'pool.jsonl'), '--out', str(tmp_path/'a.jsonl'), '--base-url',
                           srv.base_url, '--model', 'm', '--api-key-env', 'LION_TEST_API_KEY']) == 0
    for f in tmp_path.rglob('*'):
        if f.is_file(): assert secret.encode() not in f.read_bytes(), f
    monkeypatch.delenv('LION_TEST_API_KEY')
    with pytest.raises(Exception, match='LION_TEST_API_KEY'):
        make_client(spec, role='teacher', cache_dir=tmp_path/'cache2').run(reqs(1))


def test_cache_is_safe_with_several_processes(tmp_path):
    """Four processes creating and writing the same cache at once lose nothing (one at a time, and in groups); the
    first ones race to switch the new file to WAL, which SQLite refuses without waiting: they wait and retry."""
    code = ('import sys; from lion_nb.llm import ResponseCache; c = ResponseCache(sys.argv[1]); t = sys.argv[2]; '
            '[c.put(f"{t}-{i}", {"text": str(i)}) for i in range(100)]; '
            'c.put_many([(f"{t}-{i}", {"text": str(i)}) for i in range(100, 150)])')
    ps = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path), tag], cwd=ROOT) for tag in 'abcd']
    assert [p.wait(timeout=120) for p in ps] == [0, 0, 0, 0]
    from lion_nb.llm import ResponseCache
    c = ResponseCache(tmp_path)
    assert len(c) == 600 and c.get('a-149') == {'text': '149'} and c.get('d-0') == {'text': '0'}


# ---------------------------------------------------------------- Batch API at scale (issue 13)

BATCH_SCRIPT = '''
import json, sys
from lion_nb.core import ModelSpec
from lion_nb.llm import ChatRequest, make_client
a = json.loads(sys.argv[1])
rs = [ChatRequest(f'q{i}', [{'role': 'user', 'content': f'q number {i}'}], max_tokens=32) for i in range(a['n'])]
out = make_client(ModelSpec(**a['spec']), role='teacher', cache_dir=a['cache'], batch_poll_s=0.02).run(rs)
print(json.dumps([r.status for r in out]))
'''


def test_batch_run_is_split_to_the_request_and_size_limits(tmp_path):
    from lion_nb.llm import BatchRunner
    with serve() as srv:
        spec = spec_for(srv, batch_api=True, batch_max_requests=4)
        rs = reqs(10)
        out = make_client(spec, role='teacher', cache_dir=tmp_path/'a', batch_poll_s=0.01).run(rs)
        assert [r.key for r in out] == [r.key for r in rs] and all(r.status == 'done' for r in out)
        assert srv.batches_created == 3 and srv.files_uploaded == 3
        assert sorted(b['request_counts']['total'] for b in srv.batches.values()) == [2, 4, 4]
        assert all(srv.batch_counts[skey(spec, r)] == 1 for r in rs)
        # by size: room for three lines per file
        c = make_client(spec_for(srv, batch_api=True), role='teacher', cache_dir=tmp_path/'b', batch_poll_s=0.01)
        line = max(len(BatchRunner(c).line(c.key(r), r)) + 1 for r in rs)
        c.spec = c.spec.model_copy(update={'batch_max_bytes': 3*line + 2}); before = set(srv.files)
        assert all(r.status == 'done' for r in c.run(rs)) and srv.batches_created == 3 + 4
        assert max(f['bytes'] for i, f in srv.files.items() if f['purpose'] == 'batch' and i not in before) <= 3*line + 2


def test_server_enforces_the_batch_limits(tmp_path):
    "The stand-in refuses what OpenAI refuses: more lines than allowed (the batch fails), a file too big (HTTP 400)."
    from lion_nb.core import LionError
    with serve(batch_max_requests=3) as srv:
        out = make_client(spec_for(srv, batch_api=True), role='teacher', cache_dir=tmp_path/'a', batch_poll_s=0.01).run(reqs(5))
        assert all(r.status == 'failed' for r in out) and 'at most 3' in out[0].error
        ok = make_client(spec_for(srv, batch_api=True, batch_max_requests=3), role='teacher', cache_dir=tmp_path/'a',
                         batch_poll_s=0.01).run(reqs(5))
        assert all(r.status == 'done' for r in ok)          # within the limit: split, and the failures retried
    with serve(batch_max_file_bytes=2000) as srv:
        with pytest.raises(LionError, match='too large'):
            make_client(spec_for(srv, batch_api=True), role='teacher', cache_dir=tmp_path/'b', batch_poll_s=0.01).run(reqs(20))
        assert srv.batches_created == 0
        out = make_client(spec_for(srv, batch_api=True, batch_max_bytes=2000), role='teacher', cache_dir=tmp_path/'b',
                          batch_poll_s=0.01).run(reqs(20))
        assert all(r.status == 'done' for r in out) and srv.batches_created >= 2


@pytest.mark.parametrize('kill_at', ['between_collections', 'between_submissions'])
def test_batch_run_killed_between_batches_resumes_without_resubmitting(tmp_path, kill_at):
    "kill -9 with batches submitted (one collected) or half submitted; the re-run submits no request twice."
    n, folder = 10, tmp_path/'batches'
    with serve(batch_gate=set(), upload_latency_s=1.0 if kill_at == 'between_submissions' else 0.0) as srv:
        spec = spec_for(srv, batch_api=True, batch_max_requests=4)
        arg = json.dumps({'spec': spec.model_dump(), 'n': n, 'cache': str(tmp_path)})
        p = subprocess.Popen([sys.executable, '-c', BATCH_SCRIPT, arg], cwd=ROOT, env={**os.environ, 'TQDM_DISABLE': '1'},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if kill_at == 'between_collections':
            wait_until(lambda: srv.batches_created == 3, proc=p)
            srv.batch_gate = {1}                                   # the provider finishes the first batch only
            wait_until(lambda: len(list(folder.glob('*.collected.json'))) == 1, proc=p)
        else:                                                      # batch 1 created, file 2 uploading
            wait_until(lambda: srv.batches_created == 1 and srv.files_uploaded == 2, proc=p)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert srv.batches_created == (3 if kill_at == 'between_collections' else 1)
        srv.batch_gate, srv.upload_latency_s = None, 0.0
        c = make_client(spec, role='teacher', cache_dir=tmp_path, batch_poll_s=0.02)
        rs = reqs(n)
        out = c.run(rs)
        assert all(r.status == 'done' for r in out) and [r.text for r in out] == [f'Answer to: q number {i}' for i in range(n)]
        assert srv.batches_created == 3, 'no batch was submitted twice'
        assert all(srv.batch_counts[skey(spec, r)] == 1 for r in rs), 'no request was answered twice'
        assert c.stats['cache_hits'] == (4 if kill_at == 'between_collections' else 0)
        assert len(list(folder.glob('*.collected.json'))) == 3 and not [f for f in folder.glob('*.json') if 'collected' not in f.name]
        assert make_client(spec, role='teacher', cache_dir=tmp_path).run(rs) and srv.batches_created == 3


# ---------------------------------------------------------------- newer OpenAI models, keys (issue 13)

def test_reasoning_models_get_max_completion_tokens_and_no_temperature(tmp_path):
    from lion_nb.cache import DEFAULT_HEADROOM
    seen = []
    def reply(body):
        seen.append(body); return 'ok'
    r = ChatRequest('k', [{'role': 'user', 'content': 'hi'}], temperature=0.7, max_tokens=50)
    cases = [('o3-mini', {}), ('gpt-5-mini', {}), ('gpt-4o', {}),
             ('house-reasoner', {'token_param': 'max_completion_tokens', 'sends_temperature': False}), ('o1', {'sends_temperature': True})]
    with serve(reply) as srv:
        for model, kw in cases:
            make_client(spec_for(srv, model=model, **kw), role='teacher', cache_dir=tmp_path).run([r])
        make_client(spec_for(srv, model='o4-mini', batch_api=True), role='teacher', cache_dir=tmp_path, batch_poll_s=0.01).run([r])
        batch_line = json.loads(next(f['data'] for f in srv.files.values() if f['purpose'] == 'batch'))['body']
    got = [(b['model'], b.get('max_tokens'), b.get('max_completion_tokens'), b.get('temperature')) for b in seen]
    h = 50 + DEFAULT_HEADROOM    # reasoning families: the answer's budget plus the reasoning headroom (issue 25)
    assert got[:5] == [('o3-mini', None, h, None), ('gpt-5-mini', None, h, None), ('gpt-4o', 50, None, 0.7),
                       ('house-reasoner', None, 50, None), ('o1', None, h, 0.7)]
    assert batch_line['max_completion_tokens'] == h and 'max_tokens' not in batch_line and 'temperature' not in batch_line


def test_401_without_a_key_variable_says_that_no_key_was_sent(tmp_path, monkeypatch, capsys):
    from lion_nb.core import LionError
    write_jsonl(tmp_path/'pool.jsonl', pool(2))
    with serve(api_key='sk-right') as srv:
        out = make_client(spec_for(srv), role='teacher', cache_dir=tmp_path/'c').run(reqs(1))
        assert out[0].status == 'failed' and 'HTTP 401' in out[0].error and 'no API key was sent' in out[0].error
        assert 'api_key_env' in out[0].error and '--api-key-env' in out[0].error
        assert srv.counts == {} or sum(srv.counts.values()) == 0   # refused before any chat was counted: one try, no retries
        rc = answer_cli(['--role', 'teacher', '--pool', str(tmp_path/'pool.jsonl'), '--out', str(tmp_path/'a.jsonl'),
                         '--base-url', srv.base_url, '--model', 'm'])
        assert rc == 1 and 'no API key was sent' in capsys.readouterr().err
        with pytest.raises(LionError, match='no API key was sent'):
            make_client(spec_for(srv, batch_api=True), role='teacher', cache_dir=tmp_path/'b').run(reqs(1))
        monkeypatch.setenv('LION_TEST_KEY', 'sk-wrong')       # a key was named and sent: a plain 401
        out = make_client(spec_for(srv, api_key_env='LION_TEST_KEY'), role='teacher', cache_dir=tmp_path/'c').run(reqs(1))
        assert 'HTTP 401' in out[0].error and 'no API key was sent' not in out[0].error
        monkeypatch.setenv('LION_TEST_KEY', 'sk-right')
        assert make_client(spec_for(srv, api_key_env='LION_TEST_KEY'), role='teacher', cache_dir=tmp_path/'c').run(reqs(1))[0].status == 'done'


# ---------------------------------------------------------------- endpoint students are cached by their weights (issue 14)

def test_endpoint_student_never_gets_a_previous_checkpoints_answers(tmp_path):
    """Same URL, same model name, a server restarted on a new checkpoint (its /v1/models `root`, as vLLM lists it):
    fresh answers. The cache used to be keyed by URL and model name, and replayed the previous student's answers."""
    a, b = tiny_llama(tmp_path/'A'), tiny_llama(tmp_path/'B')
    serving = {'ckpt': 'A'}
    with serve(lambda body: f"student {serving['ckpt']} answers", models_root=str(a)) as srv:
        spec = spec_for(srv, model='student')
        run = lambda: make_client(spec, role='student', cache_dir=tmp_path).run(reqs(2))
        first = run()
        serving['ckpt'], srv.models_root = 'B', str(b)
        second = run()
        serving['ckpt'], srv.models_root = 'A', str(a)
        third = run()
        time.sleep(0.01); (a/'config.json').write_text((a/'config.json').read_text())   # retrained in place
        serving['ckpt'] = 'A2'; fourth = run()
        teacher = make_client(spec, role='teacher', cache_dir=tmp_path)    # other roles: the URL, as before
        assert teacher.endpoint_id() == srv.base_url
    assert [r.text for r in first] == ['student A answers']*2
    assert [r.text for r in second] == ['student B answers']*2 and not any(r.cached for r in second)
    assert all(r.cached for r in third) and [r.text for r in third] == ['student A answers']*2
    assert [r.text for r in fourth] == ['student A2 answers']*2 and not any(r.cached for r in fourth)


def test_endpoint_student_whose_root_is_not_a_local_folder_is_never_cached(tmp_path):
    """A remote server's `root` (`/ckpts/A`: a path on another machine) says nothing of the weights behind it: a
    checkpoint retrained there keeps its path. Such an endpoint is treated as weights unknown, as one listing no
    root: asked every time. Its path string used to be its fingerprint, so the retrained student got the old answers."""
    serving = {'ckpt': 'A'}
    with serve(lambda body: f"student {serving['ckpt']} answers", models_root='/ckpts/A') as srv:
        assert served_weights(srv.base_url, 'x') is None
        c = make_client(spec_for(srv, model='student'), role='student', cache_dir=tmp_path)
        with pytest.warns(UserWarning, match='not cached'): first = c.run(reqs(2))
        serving['ckpt'] = 'A retrained in place'
        second = make_client(spec_for(srv, model='student'), role='student', cache_dir=tmp_path).run(reqs(2))
        assert srv.n_chat == 4
    assert [r.text for r in first] == ['student A answers']*2
    assert [r.text for r in second] == ['student A retrained in place answers']*2 and not any(r.cached for r in second)


def test_endpoint_student_with_unknown_weights_is_never_served_from_the_cache(tmp_path):
    """No `checkpoint:` and no `root` in /v1/models: nothing tells one student's weights from the next one's behind
    the same URL, so its answers are asked for every time (with a warning saying how to cache them)."""
    serving = {'ckpt': 'A'}
    with serve(lambda body: f"student {serving['ckpt']} answers") as srv:
        run = lambda: make_client(spec_for(srv, model='student'), role='student', cache_dir=tmp_path).run(reqs(2))
        with pytest.warns(UserWarning, match='not cached'): first = run()
        serving['ckpt'] = 'B'
        with pytest.warns(UserWarning, match='checkpoint'): second = run()
        assert srv.n_chat == 4
        teacher = lambda: make_client(spec_for(srv, model='student'), role='teacher', cache_dir=tmp_path).run(reqs(2))
        teacher(); teacher()
        assert srv.n_chat == 6                                          # other roles are cached by URL, as before
    assert [r.text for r in first] == ['student A answers']*2
    assert [r.text for r in second] == ['student B answers']*2 and not any(r.cached for r in second)


def test_endpoint_student_with_a_named_checkpoint_is_keyed_by_its_fingerprint(tmp_path):
    "With `checkpoint:` the cache works again, keyed by the weights; prompts go to /v1/completions, rendered as trained."
    import shutil
    a = tiny_llama(tmp_path/'a'); b = Path(shutil.copytree(a, tmp_path/'b'))   # another folder: another fingerprint
    serving = {'ckpt': 'A'}
    with serve(lambda body: f"student {serving['ckpt']} answers") as srv:
        run = lambda ckpt: make_client(spec_for(srv, model='student', checkpoint=str(ckpt)), role='student', cache_dir=tmp_path).run(reqs(2))
        first = run(a)
        serving['ckpt'] = 'B'; second = run(b)
        serving['ckpt'] = 'A'; third = run(a)
        assert srv.paths['POST /v1/completions'] == 4 and srv.paths['POST /v1/chat/completions'] == 0
        time.sleep(0.01); (b/'config.json').write_text((b/'config.json').read_text())   # b retrained in place
        serving['ckpt'] = 'B2'; fourth = run(b)
    assert [r.text for r in second] == ['student B answers']*2 and not any(r.cached for r in second)
    assert all(r.cached for r in third) and [r.text for r in third] == [r.text for r in first]
    assert [r.text for r in fourth] == ['student B2 answers']*2


# ---------------------------------------------------------------- the HF student: out of memory (issue 14)

def test_hf_batch_out_of_memory_is_split_and_retried_not_failed(tmp_path):
    import torch
    ckpt = tiny_llama(tmp_path/'ckpt')
    spec = ModelSpec(backend='hf', model=str(ckpt), concurrency=8)
    rs = [ChatRequest(f'q{i}', [{'role': 'user', 'content': f'Explain item {i}'}], max_tokens=4) for i in range(7)]
    c = make_client(spec, role='student', cache_dir=tmp_path/'c')
    real, sizes = c.generate, []
    def small_gpu(prompts, *a, **kw):
        sizes.append(len(prompts))
        if len(prompts) > 2: raise torch.OutOfMemoryError('CUDA out of memory (injected for batches above 2)')
        return real(prompts, *a, **kw)
    c.generate = small_gpu
    out = c.run(rs)
    assert all(r.status == 'done' for r in out) and sizes[0] == 7 and c.batch_size <= 3 and c.stats['retries'] >= 1
    ref = make_client(spec, role='student', batch_size=1)
    ref.model, ref.tokenizer, ref.eos_ids = c.model, c.tokenizer, c.eos_ids
    assert [r.text for r in out] == [r.text for r in ref.run(rs)]      # greedy: the split changes nothing
    # a single prompt that does not fit fails alone, with the reason
    d = make_client(spec, role='student')
    d.model, d.tokenizer, d.eos_ids = c.model, c.tokenizer, c.eos_ids
    real_d = d.generate
    def one_too_long(prompts, *a, **kw):
        if any('item 3' in p for p in prompts): raise torch.OutOfMemoryError('CUDA out of memory (injected)')
        return real_d(prompts, *a, **kw)
    d.generate = one_too_long
    res = d.run(rs)
    assert [r.status for r in res] == ['done']*3 + ['failed'] + ['done']*3 and 'OutOfMemoryError' in res[3].error


def test_oom_halves_run_after_the_failed_attempt_is_freed(tmp_path):
    """The halves of a batch that ran out of memory start only once the failed attempt's tensors are gone. They used to
    run inside the `except` block, whose traceback kept the failed attempt's frames (and their tensors) alive, so on a
    GPU the halves met the same full memory. Here a wrapped `generate` allocates its "activations" and raises; each
    later call checks that every earlier failed attempt's tensor has been freed (on the old code: still alive)."""
    import gc, torch, weakref
    ckpt = tiny_llama(tmp_path/'ckpt')
    c = make_client(ModelSpec(backend='hf', model=str(ckpt), concurrency=8), role='student', cache_dir=tmp_path/'c')
    real, failed, alive_at_retry, sizes = c.generate, [], [], []
    def small_gpu(prompts, *a, **kw):
        alive_at_retry.extend(w() is not None for w in failed)
        sizes.append(len(prompts))
        if len(prompts) > 2:
            activations = torch.empty(1 << 20)             # what the failed attempt held
            failed.append(weakref.ref(activations))
            raise torch.OutOfMemoryError('CUDA out of memory (injected for batches above 2)')
        return real(prompts, *a, **kw)
    c.generate = small_gpu
    out = c.run([ChatRequest(f'q{i}', [{'role': 'user', 'content': f'Explain item {i}'}], max_tokens=4) for i in range(7)])
    assert all(r.status == 'done' for r in out) and sizes[:3] == [7, 3, 1] and len(failed) >= 2
    assert alive_at_retry and not any(alive_at_retry)      # every retry started with the failed attempts freed
    # close() drops every replica (each GPU's copy), not only the first
    replicas = [weakref.ref(m) for m in c.replicas]
    c.generate = real = None
    c.close()
    gc.collect()
    assert c.replicas == [] and c.model is None and not any(r() is not None for r in replicas)


def test_hf_batches_are_shared_between_replicas(tmp_path):
    "With several replicas (one per GPU; here two handles on one CPU model) each batch runs on one of them, once."
    ckpt = tiny_llama(tmp_path/'ckpt')
    spec = ModelSpec(backend='hf', model=str(ckpt), concurrency=2)
    rs = [ChatRequest(f'q{i}', [{'role': 'user', 'content': f'Explain item {i}' + ' more'*i}], max_tokens=4) for i in range(7)]
    c = make_client(spec, role='student').load()
    c.replicas = [c.model, c.model]
    real, used = c.generate, []
    def gen(prompts, n, temp=0.0, seed=None, replica=0):
        used.append((replica, len(prompts))); return real(prompts, n, temp, seed, replica)
    c.generate = gen
    out = c.run(rs)
    ref = make_client(spec, role='student', batch_size=1)
    ref.model, ref.tokenizer, ref.eos_ids = c.model, c.tokenizer, c.eos_ids
    assert [r.text for r in out] == [r.text for r in ref.run(rs)]
    assert sum(n for _, n in used) == 7 and {r for r, _ in used} <= {0, 1} and len(used) == 4
    lens = [len(c.tokenizer(p, add_special_tokens=False)['input_ids']) for _, _, p in sum(c.batches({r.key: r for r in rs}), [])]
    assert lens == sorted(lens, reverse=True)                       # longest first
