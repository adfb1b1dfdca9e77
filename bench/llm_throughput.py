"""Throughput of the LLM layer against a rate-limited endpoint, and the paper's one-at-a-time pattern.

A local OpenAI-compatible server (`lion_nb.testing`, in its own process) answers each request after
300 ms and enforces 600 requests per minute (sliding 60 s window; 429 + Retry-After beyond it). Our client
(concurrency 16, rpm 600) sends N >= 500 distinct requests through an empty cache. The bar: it sustains at
least 95% of the limit with zero failures.

The baseline is sequential calling, one request at a time with the plain `openai` client (the paper's
pattern without its 20 s sleep). It is timed on a subset and extrapolated to N (labelled as such).

Prints a table, then one JSON line.   Usage: python bench/llm_throughput.py [--n 600] [--seq-n 40]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('TQDM_DISABLE', '1')


def start_server(latency_s: float, rpm: int):
    p = subprocess.Popen([sys.executable, '-m', 'lion_nb.testing', '--latency-s', str(latency_s), '--rpm', str(rpm)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith('READY '): p.kill(); raise SystemExit(f'server did not start: {line!r}')
    return p, line.split()[1]


def stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.rsplit('/v1', 1)[0] + '/_stats') as r: return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=600); ap.add_argument('--seq-n', type=int, default=40)
    ap.add_argument('--latency-s', type=float, default=0.3); ap.add_argument('--rpm', type=int, default=600)
    ap.add_argument('--concurrency', type=int, default=16)
    a = ap.parse_args()
    if a.n < 500: raise SystemExit('--n must be at least 500')
    sys.path.insert(0, str(ROOT))
    import openai
    from lion_nb.core import ModelSpec
    from lion_nb.llm import ChatRequest, make_client

    srv, url = start_server(a.latency_s, a.rpm)
    try:
        # ours: async, rate-limited to the endpoint's limit, through an empty cache
        spec = ModelSpec(backend='openai', model='bench', base_url=url, concurrency=a.concurrency, rpm=a.rpm, timeout_s=30)
        reqs = [ChatRequest(f'r{i}', [{'role': 'user', 'content': f'Question number {i}: what is {i} + {i}?'}], max_tokens=64) for i in range(a.n)]
        with tempfile.TemporaryDirectory() as d:
            client = make_client(spec, role='teacher', cache_dir=d)
            t0 = time.monotonic(); res = client.run(reqs); ours_s = time.monotonic() - t0
        failures = sum(r.status != 'done' for r in res)
        st = stats(url)
        ours_rpm = a.n/ours_s*60

        # the paper's pattern without its sleep: one request at a time, on a subset, extrapolated
        sync = openai.OpenAI(base_url=url, api_key='none', max_retries=0, timeout=30)
        t0 = time.monotonic()
        for i in range(a.seq_n):
            sync.chat.completions.create(model='bench', messages=[{'role': 'user', 'content': f'Sequential {i}'}], max_tokens=64)
        seq_sub_s = time.monotonic() - t0
        seq_rpm = a.seq_n/seq_sub_s*60
        seq_extrap_s = a.n/a.seq_n*seq_sub_s
        st2 = stats(url)
    finally:
        srv.kill(); srv.wait()

    ratio = seq_extrap_s/ours_s
    paper_s = a.n*(20 + seq_sub_s/a.seq_n)
    rows = [('endpoint limit', f'{a.rpm} req/min, {a.latency_s*1000:.0f} ms per request', ''),
            ('ours: requests', f'{a.n} (concurrency {a.concurrency}, client rpm {a.rpm})', ''),
            ('ours: wall time', f'{ours_s:.1f} s', ''),
            ('ours: sustained rate', f'{ours_rpm:.1f} req/min', f'{ours_rpm/a.rpm*100:.1f}% of the limit'),
            ('ours: failures / 429s seen', f"{failures} / {st['rate_limited'] + st['faults'].get('429', 0)}", f"retries {client.stats['retries']}"),
            ('sequential: measured', f'{a.seq_n} requests in {seq_sub_s:.1f} s', f'{seq_rpm:.1f} req/min'),
            (f'sequential: {a.n} requests', f'{seq_extrap_s:.1f} s', f'EXTRAPOLATED from {a.seq_n}'),
            ('speed-up', f'{ratio:.2f}x', 'ours vs sequential (the limit caps ours)'),
            ("paper's pattern (20 s sleep)", f'{paper_s/3600:.1f} h', f'COMPUTED: {a.n} x (20 s + measured {seq_sub_s/a.seq_n:.2f} s), {paper_s/ours_s:.0f}x ours')]
    w = max(len(r[0]) for r in rows); w2 = max(len(r[1]) for r in rows)
    print('LLM layer throughput vs a rate-limited local endpoint')
    for r in rows: print(f'  {r[0]:<{w}}  {r[1]:<{w2}}  {r[2]}')
    ok = failures == 0 and ours_rpm >= 0.95*a.rpm
    print(f"  bar: >= 95% of the limit with zero failures -> {'PASS' if ok else 'FAIL'}")
    print(json.dumps({'bench': 'llm_throughput', 'n': a.n, 'latency_ms': a.latency_s*1000, 'limit_rpm': a.rpm,
                      'concurrency': a.concurrency, 'ours_s': round(ours_s, 2), 'ours_rpm': round(ours_rpm, 1),
                      'fraction_of_limit': round(ours_rpm/a.rpm, 4), 'failures': failures, 'server_429': st['rate_limited'],
                      'retries': client.stats['retries'], 'seq_measured_n': a.seq_n, 'seq_measured_s': round(seq_sub_s, 2),
                      'seq_rpm': round(seq_rpm, 1), 'seq_extrapolated_s': round(seq_extrap_s, 1), 'speedup': round(ratio, 2),
                      'paper_pattern_s_computed': round(paper_s), 'server_requests': st2['n_chat'], 'pass': ok}))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
