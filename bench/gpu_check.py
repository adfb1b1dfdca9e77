"""The GPU check (issue 26): lion_nb's GPU path on the lent GPU machine as it is, in at most about 7 minutes.

Run it through `bench/gpu_check.sh`, which installs the carried wheels first (see there). In order:
  1. environment: the GPU's name, memory and driver; torch, CUDA and NCCL versions; the lion_nb dependencies the
     machine lacks (settings.ini), and whether the modules this check imports load (exit 3: CPU-only torch,
     4: wheels missing, 5: no GPU visible);
  2. training with the project's entry point (`launch_training`: torchrun, FSDP2, nccl, bfloat16 compute): a
     random Llama of LLaMA-7B's width (hidden 4096, 32 heads, intermediate 11008) with `--layers` layers (4:
     about 1.07B parameters with a 32,000 vocabulary) at the paper's sequence length (1024) with activation
     checkpointing: a first launch that stops half way (a sharded checkpoint), a second that resumes from it and
     writes the streamed export; then a short launch with gradient sync during accumulation switched the other
     way (train setting `sync_each_micro_batch`, when this tree has it); peak memory of each, tokens/s, MFU,
     checkpoint and export times, each extrapolated to LLaMA-7B on 8 GPUs (formulas printed);
  3. generation fallback: `HFClient` (transformers, bfloat16) on the export with a forced out-of-memory error
     (on a GPU: the allocator capped a little above the weights; on the CPU: an injected OutOfMemoryError for
     batches over 2): splits, failures, memory held after recovery;
  4. the engine path without vLLM: `EngineClient` launches our transformers server (`serve-hf`) on the export,
     32 completions, stop, time until the process group is gone and the GPU memory is back, restart at once;
  5. vLLM the same way where it is installed, else "vllm: not installed here, skipped".
Prints a table, then one JSON line (last). `--cpu-smoke` runs the same path on 2 CPU processes (gloo), tiny sizes.
"""
import argparse, importlib, importlib.metadata as md, importlib.util, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0}   # dense bf16 per GPU, the vendors' sheets
LLAMA7B = dict(params=6.74e9, layers=32, hidden=4096, gpus=8)        # the paper's student, on one 8-GPU node
NEEDED = ['pydantic', 'fastcore', 'openai', 'lion_nb.core', 'lion_nb.train', 'lion_nb.engine', 'lion_nb.llm']
EXIT_CPU_TORCH, EXIT_WHEELS, EXIT_NO_GPU = 3, 4, 5


def norm(name: str) -> str: return re.sub(r'[-_.]+', '-', name).lower()


def _version_tuple(v: str) -> tuple:
    try:
        from packaging.version import Version
        return (Version(v),)
    except Exception: return tuple(int(x) if x.isdigit() else 0 for x in re.split(r'[.+-]', v))


def plan_wheels(listfile: Path, wheel_dir: Path) -> tuple[list[str], list[str]]:
    """(wheel files to install, listed packages with no wheel here): each `name==version` of `listfile` this
    Python lacks, or has at an older version than the one carried (stdlib and packaging only)."""
    files, missing = [], []
    for line in Path(listfile).read_text().split():
        name, ver = line.split('==')
        try:
            if _version_tuple(md.version(name)) >= _version_tuple(ver): continue
        except md.PackageNotFoundError: pass
        found = [w for w in sorted(Path(wheel_dir).glob('*.whl'))
                 if norm(w.name.split('-')[0]) == norm(name) and w.name.split('-')[1] == ver]
        (files.append(str(found[0])) if found else missing.append(line))
    return files, missing


def requirements() -> list[str]:
    "lion_nb's requirements (distribution names) from settings.ini."
    text = (ROOT / 'settings.ini').read_text()
    reqs = re.search(r'^requirements\s*=\s*(.*)$', text, re.M).group(1).split()
    return [re.split(r'[<>=!~\[;]', r)[0] for r in reqs]


def environment() -> dict:
    "What this machine is: GPU, driver, torch, CUDA, NCCL, and the lion_nb dependencies it lacks."
    import torch
    env = {'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'gpus': torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if env['gpus']:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
        try:
            v = torch.cuda.nccl.version()
            env['nccl'] = '.'.join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e: env['nccl'] = f'unknown ({type(e).__name__})'
        try: env['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                            capture_output=True, text=True, timeout=20).stdout.split()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired): env['driver'] = 'unknown (no nvidia-smi)'
    tmp = shutil.disk_usage(tempfile.gettempdir())
    env['disk_free_gb'] = round(tmp.free / 1e9, 1)       # the GPU run writes checkpoints of ~13 GB, two at a time
    env['cpus'] = os.cpu_count()
    missing = []
    for r in requirements():
        try: md.version(r)
        except md.PackageNotFoundError: missing.append(r)
    env['lion_nb_missing'] = missing
    env['carried_site'] = os.environ.get('LION_GPU_SITE', '')
    return env


def import_failures() -> list[str]:
    "The modules this check imports that do not load, each with the package it stopped at."
    bad = []
    for m in NEEDED:
        try: importlib.import_module(m)
        except ImportError as e: bad.append(f"{m} (needs {getattr(e, 'name', None) or e})")
    return bad


# ---------------------------------------------------------------- training
def sizes(cpu_smoke: bool, layers: int) -> dict:
    if cpu_smoke: return dict(hidden=64, heads=4, inter=128, layers=2, vocab=384, seq=256, micro=2, batch=8, nproc=2)
    return dict(hidden=4096, heads=32, inter=11008, layers=layers, vocab=32000, seq=1024, micro=4, batch=16, nproc=1)


def random_llama(folder: Path, s: dict, device: str) -> Path:
    """A random Llama of the given width and depth in bfloat16, with the tiny byte-level tokenizer (its ids fit
    the vocabulary) and no chat template (like LLaMA-7B: prompts go to /v1/completions)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from lion_nb.train import make_tiny_llama
    make_tiny_llama(folder, chat_template=False)
    (folder / 'chat_template.jinja').unlink(missing_ok=True)
    for f in [*folder.glob('*.safetensors'), *folder.glob('*.safetensors.index.json')]: f.unlink()  # tiny weights
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = LlamaConfig(vocab_size=max(s['vocab'], len(tok)), hidden_size=s['hidden'], intermediate_size=s['inter'],
                      num_hidden_layers=s['layers'], num_attention_heads=s['heads'], num_key_value_heads=s['heads'],
                      max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False, dtype='bfloat16')
    torch.manual_seed(0)
    with torch.device(device): m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(folder)
    del m
    if device == 'cuda': torch.cuda.empty_cache()
    return folder


def long_records(n: int, words: int) -> list[dict]:
    "Toy SFT records with answers of about `words` words, so that rows fill the sequence like real answers."
    from lion_nb.train import toy_sft_records
    recs = toy_sft_records(n)
    for r in recs: r['output'] = ' '.join([r['output']] * max(1, words // max(1, len(r['output'].split()))))
    return recs


def train_config(cpu_smoke: bool, s: dict, **update):
    from lion_nb.core import TrainConfig
    cfg = TrainConfig(epochs=1, lr=1e-5 if not cpu_smoke else 3e-3, max_length=s['seq'], micro_batch=s['micro'],
                      effective_batch=s['batch'], device='cpu' if cpu_smoke else 'cuda', packing=True,
                      gradient_checkpointing=True, keep=1, template='alpaca')
    return cfg.model_copy(update=update)


SYNC = 'sync_each_micro_batch'


def has_sync_setting() -> bool:
    from lion_nb.core import TrainConfig
    return SYNC in TrainConfig.model_fields


def launch(data, model, out, cfg, nproc, steps) -> tuple[list[str], float]:
    from lion_nb.train import launch_training
    lines, t0 = [], time.perf_counter()
    launch_training(data, model, out, cfg, nproc, seed=0, max_steps=steps, echo=lines.append)
    return lines, time.perf_counter() - t0


def timed_tokens_per_s(log: list[dict], first_steps: set) -> float:
    "Real tokens per second over the steps, leaving out each launch's first step (start-up, allocator warm-up)."
    timed = [r for r in log if r['step'] not in first_steps] or log
    return sum(r['tokens'] for r in timed) / sum(r['time_s'] for r in timed)


def checkpoint_seconds(out: Path, step: int) -> float:
    """Seconds from the last step's log line (written just before `save_checkpoint`) to the checkpoint's
    trainer_state.json (its last file): the write of model and optimizer shards, read off file times."""
    state = out / 'checkpoints' / f'step_{step:06d}' / 'trainer_state.json'
    return round(state.stat().st_mtime - (out / 'train_log.jsonl').stat().st_mtime, 2)


def training(cpu_smoke: bool, work: Path, s: dict, steps: int) -> tuple[dict, Path]:
    "Train, checkpoint half way, resume, export; then the other gradient-sync setting. Figures; the export."
    from lion_nb.core import read_json, read_log, write_jsonl
    from lion_nb.train import export_complete
    t0 = time.perf_counter()
    model = random_llama(work / 'base', s, 'cpu' if cpu_smoke else 'cuda')
    t_model = time.perf_counter() - t0
    n_words = 60 if cpu_smoke else 600            # answers longer than the sequence: every row is full
    data = write_jsonl(work / 'sft.jsonl', long_records(steps * s['batch'], n_words))   # one row each
    out, half = work / 'run', steps // 2
    cfg = train_config(cpu_smoke, s, save_every=half)
    first, t_first = launch(data, model, out, cfg, s['nproc'], half)      # stops at half: a checkpoint
    ckpt_s = checkpoint_seconds(out, half)
    peak_first = read_json(out / 'train_summary.json')['peak_mem_gb_rank0']
    second, t_second = launch(data, model, out, cfg, s['nproc'], steps)   # resumes from it, trains the rest
    summary, shards, log = read_json(out / 'train_summary.json'), read_json(out / 'shards.json'), read_log(out / 'train_log.jsonl')
    resumed = any(f'resumed from step_{half:06d}' in l for l in second)
    default_sync = getattr(cfg, SYNC, False)
    res = {'params': shards['total'], 'layers': s['layers'], 'hidden': s['hidden'], 'seq': s['seq'],
           'micro': s['micro'], 'batch': s['batch'],
           'world': shards['world'], 'steps': summary['steps'], 'model_build_s': round(t_model, 1),
           'resumed_from_checkpoint': resumed, 'export_complete': export_complete(out / 'model', steps),
           'tokens_per_s': round(timed_tokens_per_s(log, {1, half + 1}), 1), 'final_loss': log[-1]['loss'],
           'checkpoint_s': ckpt_s, 'checkpoint_gb': round(dir_bytes(out / 'checkpoints') / 1e9, 2),
           'export_s': summary['export_s'], 'export_gb': round(dir_bytes(out / 'model') / 1e9, 2),
           'first_launch_s': round(t_first, 1), 'resume_launch_s': round(t_second, 1),
           f'peak_gb_sync_{"on" if default_sync else "off"}': max(peak_first, summary['peak_mem_gb_rank0'])}
    shutil.rmtree(out / 'checkpoints', ignore_errors=True)                # disk: the next launch writes its own
    if has_sync_setting():                                                 # the other setting, a short run
        other = work / 'run_sync'
        cfg2 = train_config(cpu_smoke, s, **{SYNC: not default_sync})
        launch(data, model, other, cfg2, s['nproc'], max(2, half))
        res[f'peak_gb_sync_{"off" if default_sync else "on"}'] = read_json(other / 'train_summary.json')['peak_mem_gb_rank0']
        res[f'tokens_per_s_sync_{"off" if default_sync else "on"}'] = round(
            timed_tokens_per_s(read_log(other / 'train_log.jsonl'), {1}), 1)
        shutil.rmtree(other, ignore_errors=True)
    else:
        res['peak_gb_sync_on'] = f'not measured: TrainConfig has no {SYNC} in this tree'
    res['default_sync_each_micro_batch'] = default_sync
    return res, out / 'model'


def dir_bytes(p: Path) -> int: return sum(f.stat().st_size for f in Path(p).rglob('*') if f.is_file())


def peak_tflops(name: str) -> float:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float('nan'))


def extrapolate(t: dict, gpu: str) -> tuple[dict, list[str]]:
    "Each training figure carried to LLaMA-7B on 8 GPUs of one node, with the formula used."
    n1, n7, L1, L7, g = t['params'], LLAMA7B['params'], t['layers'], LLAMA7B['layers'], LLAMA7B['gpus']
    r = n7 / n1
    mfu = 6 * n1 * t['tokens_per_s'] / (peak_tflops(gpu) * 1e12 * t['world'])
    state1 = 16 * n1 / 2**30 / t['world']                       # fp32 param + grad + 2 Adam moments, sharded
    ex, f = {'mfu': round(mfu, 4)}, [
        f"MFU = 6 * N * tokens/s / (peak bf16 {peak_tflops(gpu)} TFLOP/s * GPUs)  (model FLOPs; the "
        f"recomputation of activation checkpointing is not counted)"]
    for key in ('peak_gb_sync_off', 'peak_gb_sync_on'):
        if isinstance(t.get(key), (int, float)):
            act = max(0.0, t[key] - state1)                       # activations, workspace, unsharded buffers
            full_grad = 4 * n7 / 2**30 if key.endswith('off') else 0.0
            inputs = (L7 - L1) * t['micro'] * t['seq'] * LLAMA7B['hidden'] * 2 / 2**30
            ex[key + '_7b_8gpu'] = round(16 * n7 / 2**30 / g + full_grad + act + inputs, 1)
    f.append("peak GB at 7B/8 GPUs = 16 B * N7 / 8 (sharded fp32 state) + [sync off: 4 B * N7, the unsharded fp32 "
             "gradient FSDP2 keeps] + (measured peak - 16 B * N / GPUs) + (32 - L) * micro * seq * 4096 * 2 B "
             "(the checkpointed layers' bf16 inputs)")
    ex['tokens_per_s_7b_8gpu'] = round(t['tokens_per_s'] / t['world'] / r * g, 1)
    f.append("tokens/s at 7B/8 GPUs = measured tokens/s per GPU * N / N7 * 8  (same MFU; no communication cost)")
    ex['checkpoint_s_7b'] = round(t['checkpoint_s'] * r, 1)
    f.append("checkpoint s at 7B = measured s * N7 / N  (12 B/parameter to one node's disk, same bandwidth)")
    ex['export_s_7b'] = round(t['export_s'] * r, 1)
    f.append("export s at 7B = measured s * N7 / N  (2 B/parameter gathered and written by rank 0)")
    return ex, f


# ---------------------------------------------------------------- generation fallback
def generation_fallback(export: Path, cpu_smoke: bool, n: int, budget_gb: float) -> dict:
    """transformers generation on the export (bfloat16 on a GPU) with a forced out-of-memory error: the batch
    of `n` prompts is halved until it fits. Splits, failures, and the memory still held after recovery."""
    import torch
    from lion_nb.core import ModelSpec
    from lion_nb.llm import ChatRequest, make_client
    c = make_client(ModelSpec(backend='hf', model=str(export)), role='student', batch_size=n, template='alpaca')
    c.load()
    gpu = torch.cuda.is_available() and not cpu_smoke
    if gpu:
        torch.cuda.synchronize(); torch.cuda.empty_cache()
        loaded, total = torch.cuda.memory_allocated(), torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + budget_gb * 2**30) / total))
    else:                                  # no real OOM on the CPU: inject one for batches over 2
        real = c.generate
        def generate(prompts, *a, **k):
            if len(prompts) > 2: raise torch.OutOfMemoryError('forced by the GPU check (cpu-smoke)')
            return real(prompts, *a, **k)
        c.generate = generate
    reqs = [ChatRequest(f'g{i}', [{'role': 'user', 'content': f'Write a long story about the number {i}.'}],
                        max_tokens=16 if cpu_smoke else 256) for i in range(n)]
    t0 = time.perf_counter()
    out = c.run(reqs)
    wall = time.perf_counter() - t0
    res = {'prompts': n, 'done': sum(r.status == 'done' for r in out), 'failed': sum(r.status != 'done' for r in out),
           'splits': c.stats.get('retries', 0), 'batch_size_after': c.batch_size, 'wall_s': round(wall, 1),
           'dtype': str(c.model.dtype).replace('torch.', ''),
           'first_error': next((r.error[:160] for r in out if r.status != 'done'), None)}
    if gpu:
        import gc
        gc.collect(); torch.cuda.synchronize()
        res['held_after_recovery_mb'] = round((torch.cuda.memory_allocated() - loaded) / 2**20, 1)
        res['oom_budget_gb'] = budget_gb
        torch.cuda.set_per_process_memory_fraction(1.0)
    c.close()
    del c
    if gpu:
        import gc
        gc.collect(); torch.cuda.empty_cache()
        res['held_after_close_mb'] = round(torch.cuda.memory_allocated() / 2**20, 1)
    return res


# ---------------------------------------------------------------- the engine path
def gpu_used_mb() -> float:
    "Memory used on GPU 0 by every process (the CUDA driver's count), MiB; nan without a GPU."
    import torch
    if not torch.cuda.is_available(): return float('nan')
    free, total = torch.cuda.mem_get_info(0)
    return (total - free) / 2**20


def group_gone(pid: int) -> bool:
    try: os.killpg(pid, 0)
    except ProcessLookupError: return True
    except PermissionError: return False
    return False


def engine_path(export: Path, work: Path, launch: str, n: int, max_tokens: int, name: str) -> dict:
    """`EngineClient` starts `launch` on the export; `n` completions; stop; how long until the process group is
    gone and the GPU memory is back (within 120 s); then a restart at once and one more completion."""
    from lion_nb.core import ModelSpec
    from lion_nb.llm import ChatRequest, make_client
    spec = ModelSpec(backend='vllm', model=str(export), launch=launch, startup_timeout_s=600, timeout_s=300,
                     concurrency=8)
    base = gpu_used_mb()
    ask = lambda i: [{'role': 'user', 'content': f'Count to {i}.'}]
    c = make_client(spec, role='student', engine_dir=work / f'engine_{name}', template='alpaca')
    t0 = time.perf_counter()
    out = c.run([ChatRequest(f'e{i}', ask(i), max_tokens=max_tokens) for i in range(n)])
    wall = time.perf_counter() - t0
    rec = dict(c.server.record) if c.server else {}
    serving = gpu_used_mb()
    pid = c.server.proc.pid if c.server and c.server.proc else None
    t_stop = time.perf_counter()
    c.close()
    close_s = time.perf_counter() - t_stop
    while pid and not group_gone(pid) and time.perf_counter() - t_stop < 120: time.sleep(0.05)
    gone_s = time.perf_counter() - t_stop
    while gpu_used_mb() > base + 256 and time.perf_counter() - t_stop < 120: time.sleep(0.1)
    back_s = time.perf_counter() - t_stop
    t_re = time.perf_counter()
    again = make_client(spec, role='student', engine_dir=work / f'engine_{name}', template='alpaca')
    out2 = again.run([ChatRequest('again', ask(99), max_tokens=max_tokens)])
    restart_s = time.perf_counter() - t_re
    again.close()
    toks = sum(r.completion_tokens for r in out if r.status == 'done')
    return {'completions': n, 'done': sum(r.status == 'done' for r in out), 'wall_s': round(wall, 1),
            'tokens_per_s': round(toks / wall, 1) if wall else None,
            'startup_s': round(rec.get('healthy', 0) - rec.get('started', 0), 1) if rec else None,
            'stop_s': round(close_s, 2), 'group_gone_s': round(gone_s, 2),
            'gpu_mb_serving': round(serving - base, 0) if serving == serving else None,
            'gpu_memory_back_s': round(back_s, 2) if serving == serving else None,
            'restart_ok': out2[0].status == 'done', 'restart_s': round(restart_s, 1),
            'first_error': next((r.error[:160] for r in out + out2 if r.status != 'done'), None),
            'command': ' '.join(rec.get('command', [])[:4])}


def vllm_path(export: Path, work: Path, cpu_smoke: bool) -> dict:
    "vLLM through the same engine path, where it is installed beside this Python; else skipped."
    vllm = Path(sys.executable).parent / 'vllm'
    if cpu_smoke or importlib.util.find_spec('vllm') is None or not vllm.exists():
        print('vllm: not installed here, skipped', flush=True)
        return {'vllm': 'not installed here, skipped'}
    from lion_nb.engine import VLLM_LAUNCH
    launch = VLLM_LAUNCH.replace('vllm serve', f'{vllm} serve', 1) + ' --gpu-memory-utilization 0.5'
    return engine_path(export, work, launch, 32, 128, 'vllm')


# ---------------------------------------------------------------- report
def table(res: dict):
    print(f"\n{'check':<44} value")
    for sect, vals in res.items():
        if isinstance(vals, dict):
            for k, v in vals.items(): print(f"{sect + '.' + k:<44} {v}")
        else: print(f"{sect:<44} {vals}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu-smoke', action='store_true', help="2 CPU processes (gloo), tiny sizes")
    ap.add_argument('--plan-wheels', nargs=2, metavar=('LIST', 'WHEEL_DIR'),
                    help="print the carried wheel files to install (missing or older here) and exit")
    ap.add_argument('--layers', type=int, default=4, help="decoder layers of the 7B-wide model (4: ~1.07B)")
    ap.add_argument('--steps', type=int, help="optimizer steps in all (default 8; 4 with --cpu-smoke)")
    ap.add_argument('--gen-prompts', type=int, default=64, help="prompts of the generation fallback")
    ap.add_argument('--oom-budget-gb', type=float, default=0.25,
                    help="GPU memory allowed above the loaded weights while generating (forces the OOM)")
    ap.add_argument('--out', help="work folder (default: a temporary one)")
    a = ap.parse_args()
    if a.plan_wheels:
        files, missing = plan_wheels(*map(Path, a.plan_wheels))
        print('\n'.join(files))
        if missing: print('MISSING ' + ' '.join(missing), file=sys.stderr)
        return EXIT_WHEELS if missing else 0
    t_all = time.perf_counter()
    env = environment()
    print('environment: ' + json.dumps(env), flush=True)
    if not a.cpu_smoke:
        if env['cuda'] is None:
            print(f"CPU-only torch: {env['torch']} has no CUDA; this check needs the machine's CUDA build")
            return EXIT_CPU_TORCH
        if not env['gpus']:
            print(f"no GPU visible: torch {env['torch']} (CUDA {env['cuda']}) sees none")
            return EXIT_NO_GPU
        if env['disk_free_gb'] < 35:
            print(f"warning: {env['disk_free_gb']} GB free in {tempfile.gettempdir()}; the training writes ~30 GB")
    bad = import_failures()
    if bad:
        print('wheels missing: ' + '; '.join(bad))
        return EXIT_WHEELS
    work = Path(a.out or tempfile.mkdtemp(prefix='lion_gpu_check_'))
    work.mkdir(parents=True, exist_ok=True)
    s = sizes(a.cpu_smoke, a.layers)
    steps = a.steps or (4 if a.cpu_smoke else 8)
    res = {'mode': 'cpu-smoke' if a.cpu_smoke else 'gpu', 'env': {k: v for k, v in env.items() if k != 'carried_site'}}
    t, export = training(a.cpu_smoke, work, s, steps)
    res['train'] = t
    print(f"[gpu_check] training done in {time.perf_counter() - t_all:.0f} s", flush=True)
    if not a.cpu_smoke:
        res['at_7b_8gpu'], formulas = extrapolate(t, env.get('gpu', ''))
    else: formulas = ['(cpu-smoke: no extrapolation)']
    res['generation'] = generation_fallback(export, a.cpu_smoke, 16 if a.cpu_smoke else a.gen_prompts,
                                            a.oom_budget_gb)
    print(f"[gpu_check] generation done in {time.perf_counter() - t_all:.0f} s", flush=True)
    serve = '{python} -m lion_nb.engine serve-hf {checkpoint} --port {port}'
    res['engine_hf'] = engine_path(export, work, serve, 32, 8 if a.cpu_smoke else 64, 'hf')
    res['vllm'] = vllm_path(export, work, a.cpu_smoke)
    e, g, tr = res['engine_hf'], res['generation'], res['train']
    checks = {'resumed from the checkpoint': tr['resumed_from_checkpoint'], 'export complete': tr['export_complete'],
              'all steps trained': tr['steps'] == steps, 'generation: every prompt answered': g['done'] == g['prompts'],
              'generation: the forced OOM split a batch': g['splits'] > 0,
              'engine: every completion answered': e['done'] == e['completions'], 'engine: restarted': e['restart_ok']}
    res['failed_checks'] = [k for k, v in checks.items() if not v]
    res['ok'] = not res['failed_checks']
    res['total_s'] = round(time.perf_counter() - t_all, 1)
    table(res)
    print('\nformulas:\n  ' + '\n  '.join(formulas))
    print(json.dumps(res, default=str))
    return 0 if res['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
