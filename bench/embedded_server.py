"""Throughput of the embedded teacher server: start-up time, tokens/s for one stream and for 4 parallel
requests, and whether a seeded request repeats exactly. Same prompts and client for every backend.

    python bench/embedded_server.py                       # xllamacpp with the default ServerSettings
    python bench/embedded_server.py --threads 1 --poll 50 # try other settings
    python bench/embedded_server.py --backend llama-cpp-python --lcpp-python /tmp/lcpp_bench/venv/bin/python

Prints a table, then one JSON line with the figures (last line).
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

from lion_nb.models import TEACHER_NAME, ServerSettings, server_healthy, start_server, stop_server, packaged_gguf

PROMPTS = ["Write a Python function that checks whether a string is a palindrome.",
           "Explain the difference between a list and a tuple in Python.",
           "Give three tips for writing clear commit messages.",
           "What is the capital of France, and what is it famous for?"]

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def start_lcpp(python: str, gguf: Path, st: ServerSettings, log: Path):
    "Start llama-cpp-python's server (it picks no port itself, so we pass a free one)."
    port = free_port(); t0 = time.time()
    cmd = [python, '-m', 'llama_cpp.server', '--model', str(gguf), '--host', '127.0.0.1', '--port', str(port),
           '--n_threads', str(st.threads), '--n_threads_batch', str(st.threads_batch), '--n_ctx', str(st.ctx_per_slot),
           '--n_batch', str(st.n_batch), '--model_alias', TEACHER_NAME]
    proc = subprocess.Popen(cmd, stdout=open(log, 'wb'), stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}/v1'
    while True:
        if proc.poll() is not None: sys.exit(f"llama-cpp-python server exited {proc.returncode}; see {log}")
        try:
            OpenAI(base_url=base, api_key='x', max_retries=0, timeout=2).models.list(); break
        except Exception: time.sleep(0.2)
    return proc, base, time.time() - t0

def chat(client, prompt, max_tokens, seed=1, temperature=0.7):
    r = client.chat.completions.create(model=TEACHER_NAME, messages=[{'role': 'user', 'content': prompt}],
                                       max_tokens=max_tokens, temperature=temperature, seed=seed)
    return r.choices[0].message.content, r.usage.completion_tokens

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--backend', choices=['xllamacpp', 'llama-cpp-python'], default='xllamacpp')
    ap.add_argument('--lcpp-python', default='/tmp/lcpp_bench/venv/bin/python')
    ap.add_argument('--max-tokens', type=int, default=96)
    for f, v in vars(ServerSettings()).items(): ap.add_argument('--' + f.replace('_', '-'), type=type(v) if not isinstance(v, bool) else int, default=v)
    a = ap.parse_args()
    st = ServerSettings(**{f: (bool(getattr(a, f)) if isinstance(v, bool) else getattr(a, f)) for f, v in vars(ServerSettings()).items()})
    gguf = packaged_gguf()
    with tempfile.TemporaryDirectory() as d:
        if a.backend == 'xllamacpp':
            t0 = time.time(); info = start_server(gguf, st, state=Path(d)/'server.json'); startup = time.time() - t0
            base, stop = info['base_url'], lambda: stop_server(Path(d)/'server.json')
        else:
            proc, base, startup = start_lcpp(a.lcpp_python, gguf, st, Path(d)/'lcpp.log')
            stop = lambda: (os.killpg(proc.pid, 15), proc.wait())
        try:
            c = OpenAI(base_url=base, api_key='not-needed', timeout=600)
            chat(c, 'Say hi.', 8)                                     # first request: warm caches
            t0 = time.time(); toks = sum(chat(c, p, a.max_tokens)[1] for p in PROMPTS); single = toks/(time.time()-t0)
            t0 = time.time()
            with ThreadPoolExecutor(4) as ex: res = list(ex.map(lambda p: chat(c, p, a.max_tokens), PROMPTS))
            parallel = sum(n for _, n in res)/(time.time()-t0)
            again = [chat(c, PROMPTS[1], 48, seed=7)[0] for _ in range(2)]
            other = chat(c, PROMPTS[1], 48, seed=8)[0]
            with ThreadPoolExecutor(4) as ex: crowd = list(ex.map(lambda p: chat(c, p, 48, seed=7)[0], [PROMPTS[1], PROMPTS[2]]*2))
            same = again[0] == again[1] == crowd[0] == crowd[2]
        finally: stop()
    load = os.getloadavg()[0]
    fig = {'backend': a.backend, **vars(st), 'max_tokens': a.max_tokens, 'startup_s': round(startup, 2),
           'tok_s_single': round(single, 2), 'tok_s_parallel4': round(parallel, 2),
           'seeded_repeat_identical': same, 'other_seed_differs': other != again[0], 'loadavg_1m': round(load, 1)}
    w = max(map(len, fig))
    for k, v in fig.items(): print(f'{k:<{w}}  {v}')
    print(json.dumps(fig))

if __name__ == '__main__': main()
