"""Training tokens/s with packing against padding, same data, same steps, same model, one run each.

Both runs go through the real launcher (`launch_training`: torchrun, FSDP2, the training loop), with
`--max-steps` optimizer steps. Tokens/s counts real (non-pad) tokens per second of training loop, from
the loss log, leaving out the first step (warm-up). The padding baseline is the usual one: each micro-batch
padded to its longest example, examples in random order (what a padding collator does).

Data: the Self-Instruct seed tasks and the 252 user-oriented instructions with their reference outputs, read
from $LION_DATA_DIR at run time (real SFT length spread); toy records when that folder is missing.
Model: a random Llama built offline (`--layers/--hidden`), or any HF folder with `--model`.

    python bench/sft_packing.py [--steps 6] [--nproc 1] [--max-length 512] [--micro-batch 4]
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
from lion_nb.core import TrainConfig, read_log, write_jsonl
from lion_nb.train import build_examples, launch_training, make_tiny_llama, toy_sft_records


def sft_records() -> tuple[list[dict], str]:
    "Real instruction/output pairs from the public eval data when available."
    try:
        from lion_nb.data import load_seed_tasks, load_user252
        recs = [r for r in load_seed_tasks() + load_user252() if r.output and r.output.strip()]
        return [{'id': r.id, 'instruction': r.instruction, 'input': r.input, 'output': r.output} for r in recs], 'seed tasks + user-oriented 252'
    except Exception as e:   # no data folder: still measurable
        print(f"(public data unavailable: {e}; using toy records)", file=sys.stderr)
        return toy_sft_records(512), 'toy'


def run(data, model, out, cfg, steps, nproc) -> dict:
    launch_training(data, model, out, cfg, nproc, max_steps=steps, echo=lambda line: None)
    log = read_log(Path(out)/'train_log.jsonl')[1:]            # leave out the warm-up step
    tokens, secs = sum(r['tokens'] for r in log), sum(r['time_s'] for r in log)
    return {'tokens_per_s': tokens / secs, 'tokens_per_step': tokens / len(log), 's_per_step': secs / len(log), 'steps': len(log)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=6); ap.add_argument('--nproc', type=int, default=1)
    ap.add_argument('--max-length', type=int, default=512); ap.add_argument('--micro-batch', type=int, default=4)
    ap.add_argument('--layers', type=int, default=4); ap.add_argument('--hidden', type=int, default=256)
    ap.add_argument('--model', help="an HF model folder instead of the random Llama")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='sft_packing_'))
    model = Path(a.model) if a.model else make_tiny_llama(tmp/'model', layers=a.layers, hidden=a.hidden, heads=4)
    recs, source = sft_records()
    data = write_jsonl(tmp/'sft.jsonl', recs)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    exs, stats = build_examples(tok, recs, a.max_length)
    lens = [len(e['input_ids']) for e in exs]
    base = dict(epochs=10, lr=1e-4, max_length=a.max_length, micro_batch=a.micro_batch, effective_batch=a.micro_batch * a.nproc)
    res = {}
    for name, packing in [('padding', False), ('packing', True)]:
        res[name] = run(data, model, tmp/name, TrainConfig(**base, packing=packing), a.steps, a.nproc)
    ratio = res['packing']['tokens_per_s'] / res['padding']['tokens_per_s']
    print(f"data: {source}, {len(exs)} examples, tokens per example median {statistics.median(lens):.0f}, max {max(lens)} "
          f"(max_length {a.max_length}); model {'random Llama %dx%d' % (a.layers, a.hidden) if not a.model else a.model}; "
          f"{a.nproc} process(es), micro-batch {a.micro_batch}, {a.steps} steps each")
    print(f"{'batching':<10} {'tokens/s':>10} {'tokens/step':>12} {'s/step':>8}")
    for name, r in res.items():
        print(f"{name:<10} {r['tokens_per_s']:>10.0f} {r['tokens_per_step']:>12.0f} {r['s_per_step']:>8.3f}")
    print(f"packing / padding: {ratio:.2f}x")
    print(json.dumps({'bench': 'sft_packing', 'source': source, 'examples': len(exs), 'max_length': a.max_length,
                      'micro_batch': a.micro_batch, 'nproc': a.nproc, 'steps': a.steps,
                      'padding_tokens_per_s': round(res['padding']['tokens_per_s'], 1),
                      'packing_tokens_per_s': round(res['packing']['tokens_per_s'], 1), 'speedup': round(ratio, 2)}))


if __name__ == '__main__': main()
