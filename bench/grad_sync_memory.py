"""Gradient memory during accumulation, with gradient sync on each micro-batch and off (`train.sync_each_micro_batch`).

A random Llama is sharded with lion_nb's own FSDP2 setup (`shard_model`) on 2 gloo processes (CPU), and one optimizer
step's micro-batches go through lion_nb's own `accumulate`. Before each micro-batch's forward (so after the previous
ones' backward) each rank counts the gradient bytes it holds: FSDP2's unsharded gradients (`_unsharded_param.grad`,
`unsharded_accumulated_grad`) plus the sharded ones (`param.grad`, its local shard). The largest count over the step
is the figure; each rank's peak RSS is given beside it. Each setting runs in its own torchrun launch.

    python bench/grad_sync_memory.py                      # both settings, 2 processes, the default small Llama
    python bench/grad_sync_memory.py --hidden 768 --layers 12 --micro 4

Prints a table, then one JSON line with the figures (last line).
"""
import argparse, json, os, resource, subprocess, sys, tempfile
from pathlib import Path


def held_grad_bytes(model) -> dict:
    "Gradient bytes this rank holds: FSDP2's unsharded ones, and the sharded `param.grad` (its local part)."
    from torch.distributed.fsdp import FSDPModule
    unsharded = sharded = 0
    for m in model.modules():
        group = m._get_fsdp_state()._fsdp_param_group if isinstance(m, FSDPModule) else None
        for fp in (group.fsdp_params if group else []):
            for g in (getattr(fp._unsharded_param, 'grad', None) if hasattr(fp, '_unsharded_param') else None,
                      getattr(fp, 'unsharded_accumulated_grad', None)):
                if g is not None: unsharded += g.numel() * g.element_size()
    for p in model.parameters():
        if p.grad is not None:
            g = p.grad.to_local() if hasattr(p.grad, 'to_local') else p.grad
            sharded += g.numel() * g.element_size()
    return {'unsharded': unsharded, 'sharded': sharded, 'total': unsharded + sharded}


def worker(a):
    "One rank: shard the model, run one step's micro-batches through `accumulate`, report the gradient bytes held."
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM
    import lion_nb.train as T
    rank, world, dev = T.setup_distributed('cpu')
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=int(a.hidden * 8 / 3) // 64 * 64,
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64, num_key_value_heads=a.hidden // 64,
                      max_position_embeddings=a.seq, tie_word_embeddings=False)
    model = T.shard_model(LlamaForCausalLM(cfg), dev)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(rank)
    ids = lambda: torch.randint(0, a.vocab, (a.rows, a.seq), generator=g)
    batches = [{'input_ids': (x := ids()), 'labels': x, 'position_ids': torch.arange(a.seq).expand(a.rows, -1)}
               for _ in range(a.micro)]
    seen, real = [], T.token_loss_sum
    def measured(model_, b):                      # before each micro-batch: what the earlier ones left behind
        seen.append(held_grad_bytes(model_))
        return real(model_, b)
    T.token_loss_sum = measured
    n_lab = torch.tensor(float(a.micro * a.rows * (a.seq - 1)))
    T.accumulate(model, batches, n_lab, world, sync_each=a.sync == 'on')
    T.token_loss_sum = real
    after = held_grad_bytes(model)
    rec = {'rank': rank, 'params': n_params, 'peak_held_before_last_sync': max(s['total'] for s in seen[1:]),
           'held_per_micro_batch': [s['total'] for s in seen[1:]], 'after_step': after['total'],
           'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    Path(f'{a.out}.rank{rank}').write_text(json.dumps(rec))   # each rank its own file: no collective but FSDP's
    dist.barrier()                                            # every rank done before any tears the group down
    dist.destroy_process_group()


def launch(sync: str, a) -> dict:
    "One torchrun launch of `worker` with gradient sync `sync`; its ranks' records."
    out = Path(tempfile.mkdtemp()) / f'sync_{sync}.json'
    args = ['--sync', sync, '--hidden', str(a.hidden), '--layers', str(a.layers), '--vocab', str(a.vocab),
            '--seq', str(a.seq), '--rows', str(a.rows), '--micro', str(a.micro), '--out', str(out)]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(a.nproc),
           __file__, '--worker', *args]
    subprocess.run(cmd, check=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.DEVNULL)
    ranks = [json.loads(Path(f'{out}.rank{r}').read_text()) for r in range(a.nproc)]
    return {'sync': sync, 'world': a.nproc, 'ranks': ranks}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--sync', choices=['on', 'off'], default='on')
    p.add_argument('--out')
    p.add_argument('--nproc', type=int, default=2)
    p.add_argument('--hidden', type=int, default=512)
    p.add_argument('--layers', type=int, default=8)
    p.add_argument('--vocab', type=int, default=4096)
    p.add_argument('--seq', type=int, default=128)
    p.add_argument('--rows', type=int, default=2)
    p.add_argument('--micro', type=int, default=4, help="micro-batches in the step")
    a = p.parse_args(argv)
    if a.worker: return worker(a)
    res = {s: launch(s, a) for s in ('on', 'off')}
    n = res['on']['ranks'][0]['params']
    mb = lambda b: round(b / 2**20, 1)
    print(f"random Llama: {n:,} parameters (fp32 gradient {mb(4 * n)} MiB unsharded), {a.nproc} gloo processes, "
          f"{a.micro} micro-batches of {a.rows} x {a.seq} tokens")
    print(f"{'sync':<5} {'rank':>4} {'held before last sync MiB':>26} {'after step MiB':>15} {'peak RSS MiB':>13}")
    for s, r in res.items():
        for x in r['ranks']:
            print(f"{s:<5} {x['rank']:>4} {mb(x['peak_held_before_last_sync']):>26} {mb(x['after_step']):>15} "
                  f"{x['peak_rss_mb']:>13}")
    fig = {'params': n, 'nproc': a.nproc, 'micro': a.micro,
           'held_mib': {s: max(mb(x['peak_held_before_last_sync']) for x in r['ranks']) for s, r in res.items()},
           'after_step_mib': {s: max(mb(x['after_step']) for x in r['ranks']) for s, r in res.items()},
           'peak_rss_mib': {s: max(x['peak_rss_mb'] for x in r['ranks']) for s, r in res.items()},
           'unsharded_fp32_grad_mib': mb(4 * n)}
    print(json.dumps(fig))
    return fig


if __name__ == '__main__':
    main()
