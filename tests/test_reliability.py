"""Reliability and security: faults from the endpoint, kill -9 and resume, bad input, secrets.

Every remote role is played by the local OpenAI-compatible server (`lion_nb.testing`) scripted by
`faulty.scripted_reply`. In parts 1-3 the student is played by the same server (a distinct, deterministic "student"
voice), so those stages never load torch and the killed subprocesses start in about a second; part 4 runs the whole
loop (`lion_nb run`, 1 round and the final imitation, papermill, torchrun, the tiny random student). Training's kill and resume is tested
in tests/test_train.py (test_resume_after_kill); the whole loop's in tests/test_e2e.py.
"""
from __future__ import annotations
import json, os, random, re, shutil, socket, subprocess, sys
from collections import Counter
from pathlib import Path

import pytest

from lion_nb import batch, clients, llm
from lion_nb.core import Answer, LionError, ModelSpec, RunDir, read_json, read_log, read_pool, user_message
from lion_nb.testing import serve
from lion_fixtures import ROOT, is_hard, tiny_config
from faulty import (LION, NO_SCORES, FaultPlan, Recorder, cache_keys, check_files_whole, is_student, kill_and_resume,
                    leftover_temps, reply_without_scores, scripted_reply, tree_hash)

REPORT: dict = {}            # figures for the closing note (printed by test_zz_report)
NO_STUDENT = Path('/nonexistent/student')   # the student role is played by the server in these tests


def remote(base_url, **kw) -> dict:
    return dict(backend='openai', model='scripted', base_url=base_url, concurrency=8, max_retries=3, timeout_s=2, **kw)


def make_config(path, base_url, **over) -> Path:
    "tiny_config with every role (the student too) at the server, a 2 s client timeout and a few retries."
    spec = {**remote(base_url), **over.pop('remote', {})}
    over.setdefault('sampling', dict(max_new_tokens=64))   # the scripted generator's reply is ~30 tokens
    return tiny_config(path, base_url, NO_STUDENT, models={'remote': spec, 'student': dict(backend='hf', model=str(NO_STUDENT))},
                       roles={'student': 'remote'}, **over)


def latest(path, model=None) -> dict:
    "The last record per id of an append-only log."
    return {r['id'] if isinstance(r, dict) else r.id: r for r in read_log(path, model)}


@pytest.fixture
def quick_retries(monkeypatch):
    "Retry backoff of 20-40 ms instead of seconds (the LLM layer has no setting for it that the stages pass on)."
    quick = lambda attempt, base=1.0, cap=60.0, rng=random: 0.02 + 0.02 * random.random()
    for module in (clients, batch): monkeypatch.setattr(module, 'backoff_s', quick)   # where it is called


# ============================================================ 1. fault injection

def student_weights(tmp_path_factory) -> str:
    "A local folder for the scripted student's `root` in /v1/models: only a local folder is fingerprinted and cached."
    d = tmp_path_factory.mktemp('scripted-student-weights')
    (d/'config.json').write_text('{}')
    return str(d)


@pytest.fixture(scope='module')
def faulty(tmp_path_factory):
    "A server that faults ~20% of attempts (and always faults a few keys), and a run with its pools built."
    from lion_nb.core import load_config
    from lion_nb.pools import run_pools
    from lion_nb.generation import request_seed
    doomed_texts, doomed_seeds = set(), {request_seed(0, 1, 'hard', 0), request_seed(0, 1, 'easy', 1)}
    def doom(body):      # besides a random 4% of keys: two train, two cache instructions, two generation requests
        m = body['messages']
        return (len(m) == 1 and m[0]['content'] in doomed_texts) or (m[0]['content'].startswith('You write') and body.get('seed') in doomed_seeds)
    plan, reply = FaultPlan(rate=0.2, doomed=0.04, seed=1, doom=doom), reply_without_scores(0.2, 0.1, seed=1)
    weights = student_weights(tmp_path_factory)
    with serve(reply=reply, fault_fn=plan, retry_after_s=0.2, hang_s=4, models_root=weights) as srv:
        d = tmp_path_factory.mktemp('faulty')
        cfg_path = make_config(d/'cfg.yaml', srv.base_url, pools=dict(train_size=16, cache_size=16, reserve_size=0),
                               loop=dict(n_new=8), probe=dict(enabled=False))   # the probe: under kills, below
        cfg = load_config(cfg_path); run = RunDir(d/'run'); run_pools(cfg, run)
        for w in ('train', 'cache'): doomed_texts.update(user_message(r.instruction, r.input) for r in read_pool(run.pool(1, w))[-2:])
        yield dict(srv=srv, plan=plan, reply=reply, cfg=cfg, cfg_path=cfg_path, run=run)


def test_teacher_answers_under_faults(faulty, quick_retries, capsys):
    srv, run = faulty['srv'], faulty['run']
    pool = read_pool(run.pool(1, 'train'))
    out = run.stage_dir(1, 'imitation')/'teacher_answers.jsonl'
    n0 = srv.n_chat
    rc = llm.answer_cli(['--role', 'teacher', '--config', str(faulty['cfg_path']), '--pool', str(run.pool(1, 'train')),
                         '--out', str(out), '--cache-dir', str(run.cache), '--usage-log', str(run.usage),
                         '--stage', 'imitation', '--iteration', '1'])
    err = capsys.readouterr().err
    answers = latest(out, Answer)
    assert sorted(answers) == sorted(r.id for r in pool)                         # nothing dropped: in = done + failed
    done = [a for a in answers.values() if a.status == 'done']; failed = [a for a in answers.values() if a.status == 'failed']
    assert len(done) + len(failed) == len(pool) and done and failed, (len(done), len(failed))
    assert all(a.output.strip() for a in done) and all(a.error for a in failed)
    assert all(any(w in a.error for w in ('HTTP 50', 'connection error', 'empty response', 'timeout')) for a in failed), [a.error for a in failed]
    # the failures are reported: exit code 1, a count on stderr, and in the usage log
    assert rc == 1 and f"{len(failed)} failed" in err and f"{len(done)} of {len(pool)} answered" in err, err
    usage = [e for e in read_log(run.usage) if e['stage'] == 'imitation']
    assert sum(e['failures'] for e in usage) == len(failed) and sum(e['retries'] for e in usage) > 0
    assert srv.n_chat - n0 > len(pool)                                          # faults were retried
    REPORT['teacher'] = {'records': len(pool), 'done': len(done), 'failed': len(failed)}


def test_discrimination_under_faults(faulty, quick_retries):
    from lion_nb.discrimination import run_discrimination
    run, reply = faulty['run'], faulty['reply']
    s = run_discrimination(faulty['cfg'], run, 1, progress=None)
    d = run.stage_dir(1, 'discrimination')
    pool = {r.id: r for r in read_pool(run.pool(1, 'cache'))}
    hard, easy, unscored = (read_log(d/f'{n}.jsonl') for n in ('hard', 'easy', 'unscored'))
    ids = [x['id'] for x in hard + easy + unscored]
    assert sorted(ids) == sorted(pool)                                          # a partition of the Cache Pool
    assert all(x['reason'] for x in unscored) and unscored and hard and easy, (len(hard), len(easy), len(unscored))
    kinds = Counter(s['unscored_reasons'])
    assert kinds['unparseable'] >= 1, kinds                                     # referee replies without scores
    assert sum(kinds.values()) == s['unscored'] == len(unscored) == read_json(run.done_file(1, 'discrimination'))['unscored']
    # nothing unscored gets scored: every review of a scored item has scores; unscorable items are never split
    reviews = {(r['id'], r['order']): r for r in read_log(d/'reviews.jsonl')}
    for x in hard + easy:
        for o in ('teacher_first', 'student_first'):
            assert reviews[(x['id'], o)]['status'] == 'done' and reviews[(x['id'], o)]['scores']
        assert not reply.unscorable(user_message(x['instruction'], x['input']))
        if x['teacher_answer'].startswith('Answer to:'):   # a fault can garble a (fresh) teacher answer the referee then misplaces
            assert x['hard'] == is_hard(user_message(x['instruction'], x['input'])), x   # the split the scripted referee implies
    assert sum(x['teacher_answer'].startswith('Answer to:') for x in hard + easy) >= 0.8 * len(hard + easy)
    bad = {k[0] for k, r in reviews.items() if r['status'] != 'done'}
    assert bad and not bad & {x['id'] for x in hard + easy}
    assert s['referee']['parse_failures'] >= 1 and s['referee']['reviews_unscored'] == sum(r['status'] != 'done' for r in reviews.values())
    REPORT['discrimination'] = {'records': len(pool), 'hard': len(hard), 'easy': len(easy), 'unscored': len(unscored),
                                'unscored_reasons': dict(kinds)}


def test_generation_under_faults(faulty, quick_retries):
    from lion_nb.generation import REASONS, run_generation
    run = faulty['run']
    if not run.is_done(1, 'discrimination'): pytest.skip('needs the discrimination test first')
    s = run_generation(faulty['cfg'], run, 1, progress=None, plots=False)
    g = run.stage_dir(1, 'generation')
    rows = read_log(g/'candidates.jsonl'); new = read_pool(g/'new.jsonl')
    assert len(rows) == s['requested'] and all(r['kept'] or r['reason'] in REASONS for r in rows)
    failed = [r for r in rows if r['reason'] == 'failed']
    assert failed and all(r['error'] and not r['kept'] for r in failed)           # failures kept as rows, with the reason
    assert s['rejected'].get('failed', 0) == len(failed) == read_json(run.done_file(1, 'generation'))['rejected']['failed']
    assert sorted(r.id for r in new) == sorted(r['id'] for r in rows if r['kept'])
    assert sum(r['kept'] for r in rows) + sum(s['rejected'].values()) == len(rows)   # every reply accounted for
    assert all(r['finish_reason'] != 'length' or not r['kept'] for r in rows)     # cut replies are never kept
    assert [r.id for r in read_pool(run.pool(2, 'train'))] == [r.id for r in new]
    REPORT['generation'] = {'replies': len(rows), 'kept': len(new), 'rejected': s['rejected']}


def test_every_fault_kind_was_injected(faulty):
    if 'generation' not in REPORT: pytest.skip('runs after the stage tests')
    kinds = set(faulty['srv'].faults)
    assert kinds >= {'429', '500', '503', 'reset', 'hang', 'length', 'garbled', 'empty', 'badjson'}, kinds
    srv, plan = faulty['srv'], faulty['plan']
    transient = (sum(srv.faults.values()) - plan.doomed_attempts) / (srv.n_chat - plan.doomed_attempts)
    assert 0.12 < transient < 0.28, transient               # ~20% of attempts faulted, besides the doomed requests
    REPORT['faults injected'] = {'total': sum(srv.faults.values()), 'requests received': srv.n_chat, **srv.faults}
    REPORT['fault share'] = {'all attempts': round(sum(srv.faults.values()) / srv.n_chat, 3), 'transient': round(transient, 3),
                             'doomed attempts': plan.doomed_attempts}


# ============================================================ 2. kill -9 and resume

KILLS = 5


@pytest.fixture(scope='module')
def slow_server(tmp_path_factory):
    rec = Recorder()
    # the student's weights are named in /v1/models, as vLLM lists them (a local folder): a student endpoint is cached only then
    with serve(reply=scripted_reply, fault_fn=rec, latency_s=0.1, models_root=student_weights(tmp_path_factory)) as srv:
        srv.recorder = rec; yield srv


@pytest.fixture(scope='module')
def reference(slow_server, tmp_path_factory):
    """Uninterrupted runs (in-process) of teacher answers, discrimination and generation, each in its own run folder
    that starts with only the stage's inputs (as the killed runs do), with the requests each sent."""
    from lion_nb.core import load_config
    from lion_nb.pools import run_pools
    from lion_nb.discrimination import run_discrimination
    from lion_nb.generation import run_generation
    d = tmp_path_factory.mktemp('ref')
    cfg_path = make_config(d/'cfg.yaml', slow_server.base_url, remote=dict(concurrency=2),
                           pools=dict(train_size=30, cache_size=10, reserve_size=0), loop=dict(n_new=16))
    cfg = load_config(cfg_path); pools = RunDir(d/'pools'); run_pools(cfg, pools)
    ref = dict(cfg_path=cfg_path, runs={}, sent={}, pools=pools)
    def stage(name, fn, *inputs):
        run = ref['runs'][name] = copy_parts(pools.root if name != 'generation' else ref['runs']['discrimination'].root,
                                             d/name, *inputs)
        c0 = Counter(slow_server.counts); fn(run); ref['sent'][name] = Counter(slow_server.counts) - c0
    stage('teacher', lambda run: llm.answer_cli(teacher_argv(cfg_path, run)), 'iter_1/pools')
    stage('discrimination', lambda run: run_discrimination(cfg, run, 1, progress=None), 'iter_1/pools')
    stage('generation', lambda run: run_generation(cfg, run, 1, progress=None), *GEN_INPUTS)
    return ref


GEN_INPUTS = ('iter_1/pools', 'iter_1/discrimination/hard.jsonl', 'iter_1/discrimination/easy.jsonl')


def copy_parts(src, dst, *parts) -> RunDir:
    "A new run folder `dst` holding copies of `parts` of the run folder `src`."
    for part in parts:
        a, b = Path(src)/part, Path(dst)/part
        if a.is_dir(): shutil.copytree(a, b)
        else: b.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(a, b)
    return RunDir(dst)


def teacher_argv(cfg_path, run: RunDir) -> list[str]:
    return ['--role', 'teacher', '--config', str(cfg_path), '--pool', str(run.pool(1, 'train')),
            '--out', str(run.stage_dir(1, 'imitation')/'teacher_answers.jsonl'), '--cache-dir', str(run.cache),
            '--usage-log', str(run.usage), '--stage', 'imitation', '--iteration', '1']


def outputs(run: RunDir, stage: str) -> dict:
    "A stage's outputs in comparable form (logs: the last record per id; other files: parsed)."
    if stage == 'teacher':
        return {k: v.to_json() for k, v in latest(run.stage_dir(1, 'imitation')/'teacher_answers.jsonl', Answer).items()}
    d = run.stage_dir(1, stage); res = {}
    for p in sorted(d.iterdir()):
        if p.name in ('reviews.jsonl', 'probe_reviews.jsonl'):
            res[p.name] = {f"{r['id']}:{r['order']}": r for r in read_log(p)}
        elif p.name in ('answers_teacher.jsonl', 'answers_student.jsonl'): res[p.name] = latest(p)
        elif p.name in ('referee_calls.jsonl', 'probe_calls.jsonl'): continue    # logs of attempts: a kill may add a line
        elif p.suffix == '.jsonl': res[p.name] = read_log(p)
        elif p.suffix == '.json': res[p.name] = json.loads(p.read_text().replace(str(run.root), '<run>'))  # paths name the run
    if stage == 'generation':
        for w in ('train', 'cache'): res[w] = [r.to_json() for r in read_pool(run.pool(2, w))]
    return res


def check_kill_resume(stage, cmd, run, reference, srv, seed):
    runs = kill_and_resume(cmd, run.root, srv, random.Random(seed), KILLS, expected=sum(reference['sent'][stage].values()))
    killed = [r for r in runs if r['killed'] and r['sent']]     # kills that landed mid-stage
    assert len(killed) >= KILLS, f"only {len(killed)} kill(s) landed before the stage finished; make the stage longer"
    assert runs[-1]['rc'] == 0, runs[-1]['out'][-3000:]
    base = srv.base_url.rstrip('/')
    student = llm.make_client(ModelSpec(**remote(srv.base_url)), role='student').endpoint_id()   # keyed by its weights
    key = lambda k: llm.cache_key(student if is_student(srv.recorder.bodies[k]) else base, srv.recorder.bodies[k])
    # the bookkeeping is right: an uninterrupted run caches exactly the requests it sends
    assert {key(k) for k in reference['sent'][stage]} == cache_keys(reference['runs'][stage].root)
    # no run re-sends a request whose response was already cached (finished) when it started
    for i, r in enumerate(runs):
        resent = [k for k in r['sent'] if key(k) in r['before']]
        assert not resent, f"run {i} re-sent {len(resent)} finished request(s)"
        assert r['before'] <= r['after']
        if r['killed']: assert not check_files_whole(run.root, allow_torn_logs=True), check_files_whole(run.root, allow_torn_logs=True)
    # totals: the last run sends what the uninterrupted run sent minus what was finished when it started
    total_ref = sum(reference['sent'][stage].values())
    stage_keys = {key(k) for k in reference['sent'][stage]}
    finished = len(runs[-1]['before'] & stage_keys)
    assert sum(runs[-1]['sent'].values()) == total_ref - finished
    lost_in_flight = sum(sum(r['sent'].values()) for r in runs) - total_ref      # answered, but the process died first
    assert 0 <= lost_in_flight <= len(killed) * 2                                # at most `concurrency` per kill
    got, want = outputs(run, stage), outputs(reference['runs'][stage], stage)
    assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
    assert not check_files_whole(run.root), check_files_whole(run.root)
    assert any(r['after'] > r['before'] for r in killed)                        # some kills came after progress was saved
    REPORT.setdefault('kills', {})[stage] = {'kills': len(killed), 'story (killed, cached before, after, sent)': [(r['killed'], len(r['before']), len(r['after']), sum(r['sent'].values())) for r in runs], 'requests (uninterrupted)': total_ref,
                                             'resent in flight': lost_in_flight, 'temp files left': len(leftover_temps(run.root))}


def test_teacher_answers_survive_kills(reference, slow_server, tmp_path):
    run = copy_parts(reference['pools'].root, tmp_path/'run', 'iter_1/pools')
    check_kill_resume('teacher', LION + ['answer'] + teacher_argv(reference['cfg_path'], run), run, reference, slow_server, 11)


def test_discrimination_survives_kills(reference, slow_server, tmp_path):
    run = copy_parts(reference['pools'].root, tmp_path/'run', 'iter_1/pools')
    cmd = LION + ['discriminate', '--config', str(reference['cfg_path']), '--run-dir', str(run.root), '--iteration', '1']
    check_kill_resume('discrimination', cmd, run, reference, slow_server, 12)


def test_generation_survives_kills(reference, slow_server, tmp_path):
    run = copy_parts(reference['runs']['discrimination'].root, tmp_path/'run', *GEN_INPUTS)
    cmd = LION + ['generate', '--config', str(reference['cfg_path']), '--run-dir', str(run.root), '--iteration', '1']
    check_kill_resume('generation', cmd, run, reference, slow_server, 13)


def test_interrupted_repair_round_does_not_double_count_calls(tmp_path):
    """Resume between the referee's first round and its repair round: the stage's call counts (parse failures,
    repairs) must equal an uninterrupted run's. The first round's unparsed replies are logged to referee_calls.jsonl
    without a review; a resumed run asks them again (cache hits) and logs them a second time, which the counts must
    not count twice (they did until 19:15 UTC on 2026-11-21: fixed in call_stats)."""
    from lion_nb.core import ModelSpec
    from lion_nb.discrimination import Pair, RefereeSettings, call_stats, review_pairs
    from lion_nb.judging import load_judge
    from lion_fixtures import lion_reply
    def reply(body):       # the first request of every review has no scores; the repair request gets them
        return NO_SCORES if len(body['messages']) == 2 else lion_reply(body)
    pairs = [Pair(f'p{i}', f'Name {w} things.', '', f'Answer to: Name {w} things.', 'no idea', None) for i, w in enumerate(('two', 'five', 'nine'))]
    settings = RefereeSettings(judge=load_judge('default/referee'), temperature=0.2, max_tokens=64, seed=0,
                               repair_retries=1, structured=False, model='')
    class Interrupted(Exception): pass
    class StopsBeforeRound1:
        "The referee client, interrupted (like a kill) when the repair round starts."
        def __init__(self, client): self.client, self.n = client, 0
        def run(self, reqs, **kw):
            self.n += 1
            if self.n == 2: raise Interrupted
            return self.client.run(reqs, **kw)
    with serve(reply=reply) as srv:
        client = lambda d: llm.make_client(ModelSpec(**remote(srv.base_url)), role='referee', cache_dir=d/'cache')
        a, b = tmp_path/'a', tmp_path/'b'
        ref = review_pairs(pairs, client(a), settings, a/'reviews.jsonl')
        with pytest.raises(Interrupted): review_pairs(pairs, StopsBeforeRound1(client(b)), settings, b/'reviews.jsonl')
        got = review_pairs(pairs, client(b), settings, b/'reviews.jsonl')
    assert {k: (r.scores, r.status) for k, r in got.items()} == {k: (r.scores, r.status) for k, r in ref.items()}
    assert call_stats(read_log(b/'referee_calls.jsonl'), got) == call_stats(read_log(a/'referee_calls.jsonl'), ref)


# ============================================================ 3. bad input, through the real CLI

GOOD = {'id': 'a', 'instruction': 'Name three rivers.'}
BIG = 1_000_001


def jl(*objs) -> bytes: return b''.join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b'\n' for o in objs)


BAD_POOLS = {   # name: (file bytes, what the error must say after "FILE:")
    'broken JSON line': (jl(GOOD, b'{"id": "b", "instruction": '), r'2: broken JSON'),
    'missing instruction': (jl(GOOD, {'id': 'b'}), r"2: field 'instruction': Field required"),
    'empty instruction': (jl(GOOD, {'id': 'b', 'instruction': '  '}), r"2: field 'instruction': .*instruction is empty"),
    'wrong types': (jl(GOOD, {'id': 7, 'instruction': ['x']}), r"2: field 'id': .*string.*field 'instruction'"),
    'non-UTF-8 bytes': (jl(GOOD, b'{"id": "b", "instruction": "caf\xe9"}'), r'2: not UTF-8 \(byte 0xe9'),
    'duplicate ids': (jl(GOOD, GOOD), r"2: duplicate id 'a' \(first on line 1\)"),
    'record over the size limit': (jl(GOOD, {'id': 'b', 'instruction': 'x' * BIG}), r'2: record is 1,000,0\d\d bytes, over the 1,000,000-byte limit'),
    'empty pool': (b'\n', r' the pool is empty'),
}

BAD_CONFIGS = {
    'unknown key': ({'loop': {'iterashuns': 3}}, r"field 'loop.iterashuns': unknown field"),
    'bad value': ({'remote': {'concurrency': 0}}, r"field 'models.remote.concurrency': Input should be greater than or equal to 1"),
    'key in api_key_env': ({'remote': {'api_key_env': 'sk-lion-this-is-a-key'}}, r"field 'models.remote.api_key_env'.*never hold the key itself"),
}


def lion(*args, timeout=120):
    p = subprocess.run(LION + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    return p.returncode, p.stdout + p.stderr


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def existing(tmp_path_factory):
    "A folder of earlier outputs (answers, a cache, a run) that no failing command may change."
    d = tmp_path_factory.mktemp('existing')
    (d/'out').mkdir(); (d/'out'/'answers.jsonl').write_text(json.dumps(Answer(id='a', instruction='x', output='y', role='teacher', model='m').to_json()) + '\n')
    c = llm.ResponseCache(d/'out'/'cache'); c.put('k', {'text': 'y'}); c.close()
    (d/'run').mkdir(); (d/'run'/'manifest.json').write_text('{"name": "earlier"}\n')
    (d/'good.jsonl').write_bytes(jl(GOOD))
    return d


def assert_untouched(d, before):
    after = tree_hash(d)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"changed or removed: {changed}"
    return sorted(set(after) - set(before))


@pytest.mark.parametrize('case', list(BAD_POOLS))
def test_bad_pool_is_refused_with_file_and_line(case, existing):
    data, msg = BAD_POOLS[case]
    bad = existing/'bad'/f"{case.replace(' ', '_')}.jsonl"; bad.parent.mkdir(exist_ok=True); bad.write_bytes(data)
    before = tree_hash(existing/'out')
    rc, out = lion('answer', '--role', 'teacher', '--pool', bad, '--out', existing/'out'/'answers.jsonl',
                   '--base-url', f'http://127.0.0.1:{free_port()}/v1', '--model', 'm')
    assert rc == 2 and re.search(re.escape(f'lion_nb answer: error: {bad}:') + msg, out), out[-2000:]
    assert 'Traceback' not in out
    assert not assert_untouched(existing/'out', before)
    REPORT.setdefault('bad inputs', []).append(f'answer: {case}')


@pytest.mark.parametrize('cmd', ['pools', 'dedup'])
def test_bad_pool_through_other_commands(cmd, existing, tmp_path):
    bad = tmp_path/'bad.jsonl'; bad.write_bytes(BAD_POOLS['broken JSON line'][0])
    before = tree_hash(existing)
    if cmd == 'pools':
        cfg = make_config(tmp_path/'cfg.yaml', 'http://127.0.0.1:9/v1')
        rc, out = lion('pools', '--config', cfg, '--run-dir', existing/'run', '--dataset', bad)
    else:
        rc, out = lion('dedup', '--pool', existing/'good.jsonl', '--candidates', bad, '--out', existing/'out'/'kept.jsonl')
    assert rc == 2 and f'lion_nb {cmd}: error: {bad}:2: broken JSON' in out, out[-2000:]
    assert not assert_untouched(existing, before)
    REPORT.setdefault('bad inputs', []).append(f'{cmd}: broken JSON line')


@pytest.mark.parametrize('case', list(BAD_CONFIGS))
def test_bad_config_is_refused_naming_the_field(case, existing, tmp_path):
    over, msg = BAD_CONFIGS[case]
    cfg = make_config(tmp_path/'bad.yaml', 'http://127.0.0.1:9/v1', **over)
    before = tree_hash(existing)
    rc, out = lion('run', '--config', cfg, '--run-dir', existing/'run', '--dry-run')
    assert rc == 2 and re.search(re.escape(f'lion_nb run: error: {cfg}: ') + '.*' + msg, out), out[-2000:]
    assert not assert_untouched(existing, before)
    REPORT.setdefault('bad inputs', []).append(f'config: {case}')


def test_broken_yaml_names_the_line(existing, tmp_path):
    cfg = tmp_path/'bad.yaml'; cfg.write_text('name: x\nmodels:\n  remote: {backend: openai\nroles: {}\n')
    before = tree_hash(existing)
    rc, out = lion('run', '--config', cfg, '--run-dir', existing/'run', '--dry-run')
    assert rc == 2 and re.search(re.escape(f'{cfg}:') + r'\d+: not valid YAML', out), out[-2000:]
    assert not assert_untouched(existing, before)
    REPORT.setdefault('bad inputs', []).append('config: broken YAML')


def test_missing_model_path_is_a_clear_error(existing):
    before = tree_hash(existing/'out')
    rc, out = lion('answer', '--role', 'student', '--backend', 'hf', '--model', '/nonexistent/ckpt', '--pool', existing/'good.jsonl',
                   '--out', existing/'out'/'answers.jsonl')
    assert rc == 2 and 'lion_nb answer: error: /nonexistent/ckpt: no such checkpoint folder' in out, out[-2000:]
    REPORT['new files after a missing model path'] = assert_untouched(existing/'out', before)
    REPORT.setdefault('bad inputs', []).append('answer: model path that does not exist')


def test_refused_connection_ends_in_failed_records_with_the_reason(existing, tmp_path):
    "An endpoint nobody listens on: every record ends failed with 'connection error', exit code 1; earlier records stay."
    out_file = tmp_path/'answers.jsonl'; shutil.copy(existing/'out'/'answers.jsonl', out_file)
    old = out_file.read_bytes()
    pool = tmp_path/'pool.jsonl'; pool.write_bytes(jl(GOOD, {'id': 'b', 'instruction': 'Name a lake.'}, {'id': 'c', 'instruction': 'Name a sea.'}))
    rc, out = lion('answer', '--role', 'teacher', '--pool', pool, '--out', out_file, '--base-url', f'http://127.0.0.1:{free_port()}/v1',
                   '--model', 'm', '--max-retries', '1', '--timeout', '2')
    # 'a' was answered by an earlier run (resumed, not re-asked); 'b' and 'c' fail with the reason
    assert rc == 1 and '1 of 3 answered' in out and '2 failed (re-run to retry them)' in out and 'connection error' in out, out[-2000:]
    assert out_file.read_bytes().startswith(old)                                  # appended to, never rewritten
    new = read_log(out_file, Answer)[1:]
    assert sorted(a.id for a in new) == ['b', 'c'] and all(a.status == 'failed' and 'connection error' in a.error for a in new)
    REPORT.setdefault('bad inputs', []).append('answer: endpoint that refuses connections')


# ============================================================ 4. secrets

def files_with(root, needle: str) -> list[str]:
    "Every file below `root` whose bytes contain `needle` (sqlite caches, notebooks and HTML included)."
    n = needle.encode()
    return [str(p) for p in sorted(Path(root).rglob('*')) if p.is_file() and n in p.read_bytes()]


@pytest.fixture(scope='module')
def keyed(demo_run):
    "The session's demo-shaped run (tests/conftest.py: `lion_nb run`, 1 round and the final imitation), whose remote model reads a recognisable fake key from $LION_FAKE_KEY."
    return demo_run


def test_a_full_run_leaves_the_key_nowhere(keyed):
    p, key, run = keyed['proc'], keyed['key'], keyed['run']
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    auth = keyed['auth']                                           # what the server had received when the run ended
    assert auth[f'Bearer {key}'] > 0                               # the key was really used ...
    assert all(a == f'Bearer {key}' for a in auth if a.startswith('Bearer'))
    written = [q for q in run.root.rglob('*') if q.is_file()]
    kinds = {q.suffix for q in written}
    assert {'.ipynb', '.html', '.jsonl', '.json', '.sqlite'} <= kinds and run.manifest.exists(), kinds
    assert files_with(run.root, key) == [] and files_with(keyed['d'], key) == []   # ... and is in no file written
    assert key not in p.stdout and key not in p.stderr
    REPORT['secrets'] = {'files scanned': len(written), 'requests with the key': auth[f'Bearer {key}']}


def test_a_failing_run_leaves_the_key_nowhere(keyed, tmp_path):
    "The exception path: the teacher's endpoint refuses connections, the stage fails, the error and notebook are scanned."
    cfg = keyed['config'](tmp_path/'cfg.yaml', f'http://127.0.0.1:{free_port()}/v1', max_retries=1, timeout_s=2)   # the same shape
    p = subprocess.run(LION + ['run', '--config', str(cfg), '--run-dir', str(tmp_path/'run')], capture_output=True, text=True,
                       cwd=ROOT, env=keyed['env'], timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "stage 'imitation' of iteration 1 failed" in out and 'no usable teacher answer' in out, out[-3000:]
    nb = tmp_path/'run'/'iter_1'/'03_imitation.ipynb'
    assert nb.exists() and 'LionError' in nb.read_text()           # the executed notebook holds the error ...
    assert files_with(tmp_path, keyed['key']) == [] and keyed['key'] not in out   # ... and no key
    REPORT['secrets']['failing run files scanned'] = sum(1 for q in tmp_path.rglob('*') if q.is_file())


def test_a_key_is_never_a_notebook_parameter(keyed, tmp_path):
    from lion_nb.loop import run_stage
    from lion_nb.operations import check_parameters
    key = keyed['key']
    for params in ({'api_key': 'anything'}, {'openai_token': 'x'}, {'config': key}, {'note': 'sk-abcdefghijklmnop'}):
        with pytest.raises(LionError, match='refusing papermill parameter'): check_parameters(params, [key])
    assert check_parameters({'run_dir': 'outputs/x', 'iteration': 1}, [key])
    # run_stage refuses before papermill starts: a run folder named after the key would become a parameter
    run = RunDir(tmp_path/key)
    with pytest.raises(LionError, match='refusing papermill parameter'):
        run_stage('pools', run, 1, tmp_path/'cfg.yaml', secrets=[key])
    assert not (run.root).exists() or files_with(run.root, key) == []


def test_zz_report(capsys):
    "The closing note's figures (printed; see the report)."
    with capsys.disabled(): print('\nRELIABILITY REPORT ' + json.dumps(REPORT, default=str))
