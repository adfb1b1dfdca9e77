"""GPU check (issue 14): vLLM serves a student checkpoint through lion_nb's engine orchestration and answers 500
prompts; the transformers path (bfloat16, one replica per GPU, OOM-splitting batches) answers a sample of them.

It runs the real code path of a Lion stage: `make_client` with `backend: vllm` starts `vllm serve` on the
checkpoint (data-parallel over the visible GPUs), waits for /health, sends the prompts through /v1/completions
with the LLM layer (concurrency, retries, cache off), and stops the server's process group. It reports:
startup seconds, wall seconds, completion tokens per second, peak GPU memory (nvidia-smi, polled every 0.2 s),
the launch command, and the same figures for transformers on `--hf-prompts` prompts.

Needs a GPU and vLLM (`pip install 'lion_nb[gpu]'`, or vLLM in another environment: `--vllm /path/to/bin/vllm`).
Prints a table, then one JSON line.

    python bench/gpu_vllm_check.py --checkpoint CKPT [--prompts 500] [--max-tokens 256] [--hf-prompts 64]
    # e.g. the embedded student:  python bench/gpu_vllm_check.py --checkpoint "$(python -c 'from lion_nb.models import
    #   student_checkpoint; print(student_checkpoint())')"
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time
from pathlib import Path

os.environ.setdefault('TQDM_DISABLE', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')

TOPICS = ['the water cycle', 'prime numbers', 'a healthy breakfast', 'recursion', 'the French revolution', 'photosynthesis',
          'binary search', 'climate and weather', 'a job interview', 'the moon landing', 'compound interest', 'volcanoes',
          'a short poem about rain', 'sorting algorithms', 'the immune system', 'renewable energy', 'a birthday message',
          'the causes of inflation', 'how vaccines work', 'the rules of chess']
TASKS = ['Explain {t} to a ten-year-old.', 'Write three bullet points about {t}.', 'Give a one-paragraph summary of {t}.',
         'List two common misconceptions about {t}.', 'Write a short quiz question about {t}, with the answer.']


def prompts(n: int) -> list[str]:
    "n distinct instructions (topics x tasks, numbered when they repeat)."
    base = [task.format(t=t) for task in TASKS for t in TOPICS]
    return [base[i % len(base)] + (f' (variant {i // len(base)})' if i >= len(base) else '') for i in range(n)]


class GpuMemory:
    "Peak GPU memory in MiB over all visible GPUs, from nvidia-smi polled in a thread."
    def __init__(self, every_s: float = 0.2):
        self.every, self.peak, self._stop = every_s, 0, threading.Event()
    def sample(self) -> int:
        try:
            out = subprocess.run(['nvidia-smi', '--query-gpu=memory.used', '--format=csv,noheader,nounits'],
                                 capture_output=True, text=True, timeout=10).stdout
            return sum(int(x) for x in out.split())
        except (OSError, ValueError, subprocess.TimeoutExpired): return 0
    def _run(self):
        while not self._stop.is_set(): self.peak = max(self.peak, self.sample()); time.sleep(self.every)
    def __enter__(self):
        self.base = self.sample(); self.t = threading.Thread(target=self._run, daemon=True); self.t.start(); return self
    def __exit__(self, *exc): self._stop.set(); self.t.join()


def answer(client, reqs) -> dict:
    t0 = time.monotonic(); out = client.run(reqs); wall = time.monotonic() - t0
    done = [r for r in out if r.status == 'done']
    toks = sum(r.completion_tokens for r in done)
    return {'prompts': len(reqs), 'done': len(done), 'failed': len(out) - len(done), 'wall_s': round(wall, 2),
            'completion_tokens': toks, 'tokens_per_s': round(toks/wall, 1) if wall else None,
            'first_error': next((r.error for r in out if r.status != 'done'), None)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--checkpoint', required=True); ap.add_argument('--prompts', type=int, default=500)
    ap.add_argument('--max-tokens', type=int, default=256); ap.add_argument('--concurrency', type=int, default=256)
    ap.add_argument('--hf-prompts', type=int, default=64, help='prompts for the transformers comparison (0: skip)')
    ap.add_argument('--hf-batch', type=int, default=64); ap.add_argument('--tensor-parallel', type=int, default=0, help='0: auto')
    ap.add_argument('--vllm', default='vllm', help='the vllm executable (another environment is fine)')
    ap.add_argument('--out', help='folder for the launch record and server log (default: a temporary folder)')
    a = ap.parse_args()
    from lion_nb.core import ModelSpec
    from lion_nb.engine import VLLM_LAUNCH, visible_gpus
    from lion_nb.llm import ChatRequest, make_client
    gpus = visible_gpus()
    if gpus == 0:
        print('gpu_vllm_check: no GPU visible; this check needs one.')
        print(json.dumps({'bench': 'gpu_vllm_check', 'skipped': True, 'reason': 'no GPU visible'})); return 2
    out_dir = Path(a.out or tempfile.mkdtemp(prefix='gpu_vllm_check_'))
    reqs = [ChatRequest(f'p{i}', [{'role': 'user', 'content': p}], temperature=0.0, max_tokens=a.max_tokens)
            for i, p in enumerate(prompts(a.prompts))]
    launch = VLLM_LAUNCH.replace('vllm serve', f'{a.vllm} serve', 1) + ' --gpu-memory-utilization 0.85'
    spec = ModelSpec(backend='vllm', model=a.checkpoint, launch=launch, concurrency=a.concurrency,
                     tensor_parallel=a.tensor_parallel, startup_timeout_s=900, timeout_s=600)
    res = {'bench': 'gpu_vllm_check', 'gpus': gpus, 'checkpoint': a.checkpoint, 'max_tokens': a.max_tokens}
    with GpuMemory() as mem:
        c = make_client(spec, role='student', engine_dir=out_dir/'engine')   # no cache: every prompt is generated
        t0 = time.monotonic()
        try:
            v = answer(c, reqs)
            rec = dict(c.server.record) if c.server else {}
        finally: c.close()
        v['startup_s'] = round(rec.get('healthy', 0) - rec.get('started', 0), 1) if rec else None
        v['total_s'] = round(time.monotonic() - t0, 1)
    v.update(peak_gpu_mib=mem.peak, idle_gpu_mib=mem.base, command=' '.join(rec.get('command', [])),
             log=str(out_dir/'engine'/rec.get('log', '')))
    res['vllm'] = v
    if a.hf_prompts:
        import torch
        torch.cuda.reset_peak_memory_stats()
        h = make_client(ModelSpec(backend='hf', model=a.checkpoint), role='student', batch_size=a.hf_batch)
        hv = answer(h, reqs[:a.hf_prompts])
        hv['peak_gpu_mib'] = round(sum(torch.cuda.max_memory_allocated(i) for i in range(gpus))/2**20)
        hv['replicas'] = len(h.replicas); hv['dtype'] = str(h.model.dtype); h.close()
        res['hf'] = hv
        if hv['tokens_per_s'] and v['tokens_per_s']: res['vllm_over_hf_tokens_per_s'] = round(v['tokens_per_s']/hv['tokens_per_s'], 1)
    print(f"{'path':<8} {'prompts':>7} {'done':>5} {'wall s':>8} {'tokens':>8} {'tok/s':>9} {'peak MiB':>9}")
    for name in ('vllm', 'hf'):
        if name in res:
            r = res[name]
            print(f"{name:<8} {r['prompts']:>7} {r['done']:>5} {r['wall_s']:>8} {r['completion_tokens']:>8} "
                  f"{r['tokens_per_s']:>9} {r['peak_gpu_mib']:>9}")
    print(f"vLLM startup {v['startup_s']} s; command: {v['command']}")
    print(json.dumps(res))
    return 0 if v['failed'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
