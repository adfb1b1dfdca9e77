"""The paper profile at full size, on this machine, without a GPU or an API: a rehearsal of `configs/paper.yaml`.

It runs the real paper configuration, changed only where a rehearsal must:
- every remote role (teacher, referee, generator, judge) points at a local OpenAI-compatible stand-in on 127.0.0.1
  (`lion_nb.testing`: chat, files and batches endpoints), with the Batch API on for every API role. Its
  scripted answers take milliseconds: the teacher answers briefly; the referee finds about 30% of instructions hard
  and, like a real model, writes an unreadable verdict about 2% of the time (the referee stage repairs those);
  the generator writes new instructions, about 8% of them near-duplicates of each other;
- the student is a tiny random Llama whose tokenizer has NO chat template (as LLaMA-7B's has none), and all
  answers are kept brief (`max_new_tokens` 48): the student stands in for the code path, not for quality. It keeps
  the profile's `prompt_template: lion`, but runs under transformers (the profile's vLLM engine and
  `train.device: cuda` need a GPU; the engine's orchestration is tested in tests/test_engine.py);
- the data folder holds a synthetic Alpaca-shaped file of 52,002 instructions (bench/synth_alpaca.py) and links
  the public evaluation sets from $LION_DATA_DIR (read, never copied).
Everything else is the paper's size: 52,002 seed instructions, 6,000 new per round, 3 rounds and the final
imitation, Vicuna-80, the 252, AGIEval and BBH in full. `--scale` shrinks pools, rounds' size and evaluation
samples together (tests/test_rehearsal.py runs `--scale 0.05` in `make test`).

It reports per stage: wall time, requests and batches counted at the server, the dry run's estimate, the LLM
cache's size on disk, and the peak memory of the run's process tree; then the dedup time against the growing
Cache Pool per round; compares the server's count with `lion_nb run --dry-run` (they must agree within 5%), and
runs the same command a second time, which must send 0 requests. A readable table, then one JSON line.

With `--batch-queue-tokens N` the stand-in caps the input tokens enqueued per model in batches (OpenAI's
organisation queue: a batch over it fails with `token_limit_exceeded`) and every API model's spec carries the same
`batch_queue_tokens`: batches go in waves. Per stage it reports the input tokens that went through the queue and
the fewest waves that takes (tokens / N), and overall the queue's peak and the batches it refused. With
`--kill-between-waves` the first run is killed (SIGKILL, its whole process group) once a batch has ended and the
next wave's file is being uploaded, then resumed: no batch may be submitted twice (each `lion_job` is created once,
refusals aside).

The stand-in answers as OpenAI's API does today (`FakeOpenAI.today`): models it no longer serves get 404
`model_not_found`, reasoning models refuse `max_tokens` and temperatures they cannot take (400), on the chat route
and on every line of a batch alike, and reasoning tokens come out of `max_completion_tokens`. The rehearsal counts
those refusals (there must be none) and the empty answers the run stored (there must be none).
`--any-model` serves the permissive stand-in instead (any model, any parameter).

    python bench/paper_rehearsal.py [--scale 1.0] [--work outputs/rehearsal] [--fresh] [--any-model]
                                    [--batch-queue-tokens N] [--kill-between-waves]
"""
from __future__ import annotations
import argparse, hashlib, json, math, os, random, re, shutil, signal, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'))
from lion_nb.testing import last_user_text, serve          # noqa: E402  (the test suite's stand-in server)
from lion_fixtures import lion_reply                      # noqa: E402  (its scripted judge)
from synth_alpaca import OBJECTS, VERBS, make_words, synth_alpaca, write_alpaca   # noqa: E402
from lion_nb.core import STAGES, iter_jsonl                # noqa: E402

LION = [sys.executable, '-c', 'import sys; from lion_nb.cli import main; sys.exit(main())']
STAGE_LINE = re.compile(r'\[lion_nb\] iter (\d+)/(\d+) (\w+): (running|finished|done already)')
PAPER = dict(pool=52_002, n_new=6_000, eval={'vicuna80': 80, 'user252': 252, 'agieval': 2546 // 8, 'bbh': 6511 // 27})

def _h(text: str) -> int: return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)

def _between(text: str, start: str, end: str) -> str:
    m = re.search(re.escape(start) + r'(.*?)' + re.escape(end), text, re.S)
    return m.group(1).strip() if m else ''

def _referee_parts(user: str) -> tuple[str, str]:
    "(the request, the first answer) of a referee prompt, in lion_nb's tags or Lion's brackets."
    if '<request>' in user:
        return _between(user, '<request>', '</request>'), _between(user, '<assistant_1_answer>', '</assistant_1_answer>')
    return (_between(user, '[Instruction]', "[The Start of Assistant 1's Answer]"),
            _between(user, "[The Start of Assistant 1's Answer]", "[The End of Assistant 1's Answer]"))

def referee_reply(msgs: list, user: str) -> str:
    """Scores in the asked format (lion_nb's closing lines, or Lion's 'Score of the Assistant N'): hard (teacher ahead
    by 3) for ~30% of requests, unreadable for ~2% of first asks."""
    first = next(m['content'] for m in msgs if m['role'] == 'user')
    request, answer_1 = _referee_parts(first)
    if len(msgs) <= 2 and _h(request + 'x') % 50 == 0: return "Both answers have merits; it is hard to say."
    t, s = (8, 5) if _h(request) % 10 < 3 else (8, 8)
    a, b = (t, s) if answer_1.startswith('Answer to:') else (s, t)
    if '<request>' in first: return f"Assistant 1 is clear; Assistant 2 is comparable.\nAssistant 1: {a}\nAssistant 2: {b}"
    return f"Evaluation evidence: both are relevant.\nScore of the Assistant 1: {a}\nScore of the Assistant 2: {b}"

def review_reply(user: str) -> str:
    "FastChat's Vicuna-80 review: scores on the first line (general, coding), a Python tuple last (math)."
    if 'Python tuple' in user: return "Both solve it step by step.\n(8, 7)"
    return "8 7\nAssistant 1 is more detailed."

_VOCAB = make_words(random.Random(1))     # pseudo-words, as in the synthetic pool

def generator_reply(body: dict) -> str:
    """A new Alpaca-like instruction: novel for ~92% of requests, one of 40 recurring near-duplicates for the rest.
    Drawn from the whole request (its sampling seed included), as a generator at temperature 1 answers the same
    seed instruction differently each time it is asked."""
    rng = random.Random(_h(json.dumps(body, sort_keys=True)))
    if rng.random() < 0.08:
        j = rng.randrange(40)
        text = f"Describe how a {_VOCAB[j]} and a {_VOCAB[j + 40]} differ in everyday use, with {j % 5 + 2} examples."
    else:
        text = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} {' '.join(rng.choice(_VOCAB) for _ in range(rng.randint(5, 14)))}."
    return f"### New instruction\n{text}\n### New input\nnone"

def rehearsal_reply(body: dict) -> str:
    "What the scripted teacher, referee, generator or judge says to one chat request (either judge set's prompts)."
    msgs = body.get('messages') or []
    system = msgs[0]['content'] if msgs and msgs[0].get('role') == 'system' else ''
    user = last_user_text(body)
    first = next((m['content'] for m in msgs if m['role'] == 'user'), '')
    if 'impartial referee' in system or '[Instruction]' in first: return referee_reply(msgs, user)
    if '[Question]' in first: return review_reply(first)
    if system.startswith('You write instructions'): return generator_reply(body)
    if 'Instruction Creator' in first: return generator_reply(body).split('\n')[1]   # Lion's: the instruction alone
    if 'judge' in system or 'helpful, honest and harmless' in system: return lion_reply(body)
    return f"Answer to: {' '.join(user.split())[:120]}"

def brief_student(folder: Path) -> Path:
    """A tiny random Llama whose tokenizer has no chat template (built once per folder).

    Its tokenizer learns its merges from Alpaca-shaped text in the paper's prompt layout (2,048 tokens): byte-level
    merges learnt from other text would make every training example about twice as long.
    Its final norm's weights are set to 1e-6: the greedy answer depends only on the direction of the normalised
    hidden state, and Adam moves each weight by about the learning rate per step, so even a few steps at the
    paper's 2e-5 change the student's answers, as training changes a real student's (a tiny random model with
    the usual weights would answer as before, and the referee's requests would repeat and hit the cache)."""
    import torch
    from transformers import AutoModelForCausalLM
    from lion_nb.train import make_tiny_llama
    if (folder/'config.json').exists(): return folder
    make_tiny_llama(folder, vocab=2048, corpus=alpaca_texts(synth_alpaca(2_000, seed=7)))
    m = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad(): m.model.norm.weight.fill_(1e-6)
    m.save_pretrained(folder)
    (folder/'chat_template.jinja').unlink(missing_ok=True)
    tc = json.loads((folder/'tokenizer_config.json').read_text()); tc.pop('chat_template', None)
    (folder/'tokenizer_config.json').write_text(json.dumps(tc))
    return folder

def alpaca_texts(entries: list[dict]) -> list[str]:
    "Entries rendered as the student will see them: the Alpaca prompt, then the answer."
    from lion_nb.llm import alpaca_prompt
    from lion_nb.core import user_message
    return [alpaca_prompt([{'role': 'user', 'content': user_message(e['instruction'], e['input'])}]) + e['output']
            for e in entries]

def scaled(n: int, scale: float, lo: int = 1) -> int: return max(lo, round(n * scale))

def rehearsal_config(work: Path, base_url: str, student: Path, scale: float, iterations=None, nproc=None,
                     queue_tokens=None) -> Path:
    "configs/paper.yaml with the stand-in endpoints, the tiny student, brief answers and the local data folder."
    cfg = yaml.safe_load((ROOT/'configs'/'paper.yaml').read_text())
    for spec in cfg['models'].values():
        if spec['backend'] == 'openai': spec.update(base_url=base_url, batch_api=True)
        if spec['backend'] == 'openai' and queue_tokens: spec['batch_queue_tokens'] = queue_tokens
    # the student: the tiny Llama, run by transformers on the CPU (the profile's vLLM engine needs a GPU), still with
    # the profile's prompt_template (lion); training on the CPU, where the profile expects cuda
    cfg['models'][cfg['roles']['student']].update(backend='hf', model=str(student), concurrency=64)
    cfg['train']['device'] = 'cpu'
    cfg['data_dir'] = str(work/'data')
    cfg['sampling']['max_new_tokens'] = cfg['eval']['max_new_tokens'] = 48
    if iterations: cfg['loop']['iterations'] = iterations
    if nproc: cfg['train']['nproc'] = nproc
    if scale != 1:
        cfg['pools'].update(train_size=scaled(PAPER['pool'], scale), cache_size=scaled(PAPER['pool'], scale))
        cfg['loop']['n_new'] = scaled(PAPER['n_new'], scale, 2)
        cfg['eval']['samples'] = {s: scaled(n, scale) for s, n in PAPER['eval'].items()}
    path = work/'paper_rehearsal.yaml'
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

def prepare_data(work: Path, scale: float) -> Path:
    "The data folder: the synthetic Alpaca file, and a link to the public evaluation sets."
    d = work/'data'; d.mkdir(parents=True, exist_ok=True)
    f = d/'alpaca_data.json'
    if not f.exists(): write_alpaca(f, synth_alpaca(scaled(PAPER['pool'], scale)))
    shared = Path(os.environ.get('LION_DATA_DIR', ROOT.parent/'shared'/'data'))/'eval'
    if not (d/'eval').exists(): (d/'eval').symlink_to(shared.resolve(), target_is_directory=True)
    return d

def server_counts(srv) -> dict:
    st = srv.stats()
    return {'requests': st['n_chat'] + sum(st['batch_counts'].values()), 'batches': st['batches_created'],
            'chat': st['n_chat'], 'queue_tokens': queue_tokens(srv)}

def queue_tokens(srv) -> dict:
    "Input tokens of the batches the stand-in's queue accepted, per model."
    got = Counter()
    for b in list(srv.batches.values()):
        if '_refused' not in b: got[b.get('_model')] += b.get('_tokens', 0)
    return dict(got)

def min_waves(before: dict, after: dict, limit) -> int:
    "The fewest waves a stage's batches took: for each model, its input tokens over the queue limit (rounded up)."
    if not limit: return 0
    return max([math.ceil((after.get(m, 0) - before.get(m, 0)) / limit) for m in after] or [0])

def stored_empty_answers(run_dir: Path, models: set) -> int:
    """Answers of the API `models` (any `Answer` record under the run: the teacher's, the references) stored as
    done with no text: a reply cut by its reasoning must never be kept. (The tiny random student may well answer
    nothing: that is an answer, and is scored.)"""
    n = 0
    for f in run_dir.rglob('*.jsonl'):   # through the project's reader: a JSONL line ends at '\n' only, while
        for _, r in iter_jsonl(f):      # str.splitlines() also splits at U+0085 or U+2028 inside an answer
            n += (r.get('status') == 'done' and r.get('model') in models and 'output' in r
                  and not str(r['output']).strip())
    return n

def jobs_submitted_twice(srv) -> list[str]:
    "The `lion_job`s the stand-in created more than one accepted batch for (a batch submitted twice)."
    jobs = Counter((b.get('metadata') or {}).get('lion_job') for b in list(srv.batches.values()) if '_refused' not in b)
    return [j for j, n in jobs.items() if j and n > 1]

def kill_between_waves(p, srv, done: threading.Event):
    """SIGKILL `p`'s process group between two waves: once a batch has ended and the next wave's file is being
    uploaded (the stand-in holds that upload for 1.5 s)."""
    while not done.is_set() and not any(b['status'] == 'completed' for b in list(srv.batches.values())):
        time.sleep(0.01)
    srv.upload_latency_s, n = 1.5, srv.files_uploaded
    while not done.is_set() and srv.files_uploaded == n: time.sleep(0.01)
    if not done.is_set(): os.killpg(p.pid, signal.SIGKILL)
    srv.upload_latency_s = 0.0

def dir_bytes(path: Path) -> int:
    path = Path(path)
    if not path.exists(): return 0
    return sum(p.stat().st_size for p in path.resolve().rglob('*') if p.is_file())

class TreeMemory:
    "Samples the resident memory of a process and all its children; `take()` returns the peak since the last take."
    def __init__(self, pid: int, every: float = 0.5):
        import psutil
        self.proc, self.every, self.peak, self.stop = psutil.Process(pid), every, 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
    def _run(self):
        import psutil
        while not self.stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, rss)
            except psutil.Error: pass
            self.stop.wait(self.every)
    def take(self) -> int:
        p, self.peak = self.peak, 0
        return p

def run_lion(config: Path, run_dir: Path, srv, log_path: Path, limit=None, kill=False) -> tuple[list[dict], float, int]:
    """Run `lion_nb run` to the end (or, with `kill`, until killed between two waves); per stage: wall time, server
    requests and batches, the queue's input tokens and fewest waves, cache size, peak memory."""
    env = {**os.environ, 'OPENAI_API_KEY': 'sk-rehearsal-local-stand-in'}
    t0 = time.time(); stages, cur = [], None
    p = subprocess.Popen(LION + ['run', '--config', str(config), '--run-dir', str(run_dir)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    mem, done = TreeMemory(p.pid), threading.Event()
    if kill: threading.Thread(target=kill_between_waves, args=(p, srv, done), daemon=True).start()
    with open(log_path, 'a') as log:
        for line in p.stdout:
            log.write(line); log.flush()
            m = STAGE_LINE.search(line)
            if not m: continue
            k, K, stage, what = int(m[1]), int(m[2]), m[3], m[4]
            if what == 'running':
                mem.take(); cur = {'iteration': k, 'stage': stage, 't0': time.time(), 'c0': server_counts(srv)}
            elif what == 'finished' and cur:
                c = server_counts(srv)
                stages.append({'iteration': k, 'stage': stage, 'seconds': round(time.time() - cur['t0'], 1),
                               'requests': c['requests'] - cur['c0']['requests'], 'batches': c['batches'] - cur['c0']['batches'],
                               'queue_tokens': sum(c['queue_tokens'].values()) - sum(cur['c0']['queue_tokens'].values()),
                               'min_waves': min_waves(cur['c0']['queue_tokens'], c['queue_tokens'], limit),
                               'cache_mb': round(dir_bytes(run_dir/'cache') / 1e6, 1), 'peak_rss_gb': round(mem.take() / 2**30, 2)})
                print(f"  {k}/{K} {stage:<15} {stages[-1]['seconds']:>8.1f}s {stages[-1]['requests']:>8,} requests", flush=True)
    rc = p.wait(); mem.stop.set(); done.set()
    if rc != 0 and not (kill and rc == -signal.SIGKILL): raise SystemExit(f"lion_nb run failed (exit {rc}); see {log_path}")
    return stages, round(time.time() - t0, 1), rc

def dry_run(config: Path) -> tuple[dict, int, str]:
    "The dry run's estimated calls per (iteration, stage), its total, and its text."
    r = subprocess.run(LION + ['run', '--config', str(config), '--dry-run'], cwd=ROOT, capture_output=True, text=True, check=True)
    per = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0].isdigit() and parts[1] in STAGES:
            key = (int(parts[0]), parts[1]); per[key] = per.get(key, 0) + int(parts[4].replace(',', ''))   # calls
    total = int(next(l for l in r.stdout.splitlines() if l.startswith('total')).split()[1].replace(',', ''))
    return per, total, r.stdout

def dedup_times(run_dir: Path, threshold: float) -> list[dict]:
    "Per round: the exact ROUGE-L filter's time over that round's generated candidates against its Cache Pool."
    from lion_nb.core import RunDir, read_log, read_pool
    from lion_nb.dedup import RougeIndex
    run, out = RunDir(run_dir), []
    for cand in sorted(run.root.glob('iter_*/generation/candidates.jsonl')):
        k = int(cand.parts[-3].split('_')[1])
        pool = [r.instruction for r in read_pool(run.pool(k, 'cache'))]
        texts = [r['instruction'] for r in read_log(cand) if r.get('instruction')]
        t0 = time.time(); index = RougeIndex(pool); built = time.time() - t0; kept = 0
        for t in texts:
            ids = index.token_ids(t)
            if index.nearest(ids=ids, threshold=threshold).score < threshold: index.add(t, ids); kept += 1
        out.append({'round': k, 'cache_pool': len(pool), 'candidates': len(texts), 'kept_by_filter': kept,
                    'index_s': round(built, 2), 'seconds': round(time.time() - t0, 2)})
    return out

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description='Rehearse configs/paper.yaml at full size against local stand-ins.')
    ap.add_argument('--scale', type=float, default=1.0, help='shrink pools, new instructions and evaluation samples (1 = the paper)')
    ap.add_argument('--work', default=str(ROOT/'outputs'/'rehearsal'), help='work folder (data, student, config, run)')
    ap.add_argument('--fresh', action='store_true', help='delete the work folder first')
    ap.add_argument('--iterations', type=int, help="rounds (default: the paper's 3)")
    ap.add_argument('--nproc', type=int, help="training processes (default: the paper's 8)")
    ap.add_argument('--batch-queue-tokens', type=int, help="the stand-in's (and the specs') Batch API queue limit per model")
    ap.add_argument('--kill-between-waves', action='store_true', help='kill the first run between two waves, then resume it')
    ap.add_argument('--any-model', action='store_true', help="a stand-in that takes any model and parameter (not today's API)")
    a = ap.parse_args(argv)
    work = Path(a.work).resolve()
    if a.fresh: shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    prepare_data(work, a.scale); student = brief_student(work/'student')
    limit, killed = a.batch_queue_tokens, None
    with serve(reply=rehearsal_reply, batch_queue_tokens=limit) as srv:
        if not a.any_model: srv.today()
        config = rehearsal_config(work, srv.base_url, student, a.scale, a.iterations, a.nproc, limit)
        per_est, est_total, est_text = dry_run(config)
        print(est_text)
        run_dir = work/'run'
        if a.kill_between_waves:
            killed_stages, _, rc = run_lion(config, run_dir, srv, work/'run0.log', limit, kill=True)
            killed = {'rc': rc, 'stages_finished': len(killed_stages), 'requests': server_counts(srv)['requests'],
                      'batches': srv.batches_created}
        stages, wall, _ = run_lion(config, run_dir, srv, work/'run1.log', limit)
        before = server_counts(srv)['requests']
        _, wall2, _ = run_lion(config, run_dir, srv, work/'run2.log', limit)
        second = server_counts(srv)['requests'] - before
        twice, peak, refused = jobs_submitted_twice(srv), srv.stats()['queue_peak'], srv.queue_refused
        shape_refusals = dict(getattr(srv, 'refused', {}))
    from lion_nb.core import load_config
    api = {m.model for m in load_config(config).models.values() if m.backend == 'openai'}
    empty = stored_empty_answers(run_dir, api)
    served = sum(s['requests'] for s in stages) + (killed['requests'] if killed else 0)
    dd = dedup_times(run_dir, load_config(config).loop.rouge_threshold)
    print(f"\n{'stage':<22} {'wall s':>9} {'requests':>10} {'dry run':>10} {'batches':>8} {'cache MB':>9} {'peak GB':>8}")
    for s in stages:
        est = per_est.get((s['iteration'], s['stage']), 0)
        print(f"iter {s['iteration']} {s['stage']:<15} {s['seconds']:>9.1f} {s['requests']:>10,} {est:>10,} {s['batches']:>8} "
              f"{s['cache_mb']:>9.1f} {s['peak_rss_gb']:>8.2f}")
    print(f"{'total':<22} {wall:>9.1f} {served:>10,} {est_total:>10,} {sum(s['batches'] for s in stages):>8}")
    for d in dd:
        print(f"dedup round {d['round']}: {d['candidates']:,} candidates vs a Cache Pool of {d['cache_pool']:,}: "
              f"{d['seconds']:.2f}s (index {d['index_s']:.2f}s)")
    ratio = served / est_total if est_total else float('nan')
    print(f"server requests / dry-run estimate: {ratio:.4f} ({'within' if abs(ratio - 1) <= 0.05 else 'OUTSIDE'} 5%); "
          f"second run: {second} requests in {wall2:.1f}s; whole rehearsal {time.time() - t_all:.0f}s")
    print(f"stand-in: {'any model' if a.any_model else 'as OpenAI today'}; requests refused: "
          f"{sum(shape_refusals.values())} {shape_refusals or ''}; API answers stored empty: {empty}")
    if limit:
        print(f"batch queue limit {limit:,} tokens: peak {max(peak.values(), default=0):,}, {refused} refused; fewest waves per "
              f"stage {[s['min_waves'] for s in stages]}; jobs submitted twice: {len(twice)}"
              + (f"; killed run: {killed}" if killed else ''))
    print(json.dumps({'scale': a.scale, 'wall_s': wall, 'requests': served, 'dry_run_calls': est_total, 'ratio': round(ratio, 4),
                      'batch_queue_tokens': limit, 'queue_peak': peak, 'queue_refused': refused, 'jobs_submitted_twice': twice,
                      'killed_run': killed, 'today': not a.any_model, 'refused_requests': shape_refusals,
                      'empty_answers': empty,
                      'batches': sum(s['batches'] for s in stages), 'second_run_requests': second, 'second_run_s': wall2,
                      'peak_rss_gb': max([s['peak_rss_gb'] for s in stages] or [0]), 'stages': stages, 'dedup': dd,
                      'total_s': round(time.time() - t_all, 1)}))
    return 0 if abs(ratio - 1) <= 0.05 and second == 0 and not twice and not shape_refusals and not empty else 1

if __name__ == '__main__':
    sys.exit(main())
