"""Student generation: batched (left padding, KV cache, length-sorted batches) vs one prompt at a time.

The embedded student (lion_nb.models.student_checkpoint(), SmolLM2-135M-Instruct converted from its GGUF)
answers 32 prompts greedily, once with batches of 32 and once one prompt at a time, through the same
`HFClient.run` path (no cache). Outputs must be identical; the bar is >= 5x tokens/s for batched.

Prints a table, then one JSON line.   Usage: python bench/student_generation.py [--model CKPT] [--max-new-tokens 64]
"""
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('TQDM_DISABLE', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')

PROMPTS = [
    'Give three tips for staying healthy.', 'What is the capital of France?', 'Explain what a prime number is.',
    'Write a haiku about autumn leaves.', 'Name two uses of a paperclip.', 'Translate "good morning" into Spanish.',
    'Summarise the water cycle in two sentences.', 'What does a CPU do?', 'List four colours of the rainbow.',
    'Write a Python function that reverses a string.', 'Why is the sky blue?', 'Suggest a name for a bakery.',
    'What is 12 times 7?', 'Describe a cat to someone who has never seen one.', 'How do plants make food?',
    'Give an example of a renewable energy source.', 'What is the opposite of "generous"?', 'Explain recursion simply.',
    'Write one sentence about the moon.', 'What are the three states of matter?', 'How many days are in a leap year?',
    'Recommend a good habit for studying.', 'What is photosynthesis?', 'Write a short thank-you note to a teacher.',
    'Explain the difference between weather and climate.', 'What is an adjective? Give an example.',
    'Convert 100 degrees Celsius to Fahrenheit.', 'Name a famous painting and its painter.',
    'What is the boiling point of water at sea level?', 'Give a synonym for "happy".',
    'Describe the taste of a lemon.', 'What is the largest planet in our solar system?']


def checkpoint(arg):
    if arg: return Path(arg), 'given with --model'
    try:
        from lion_nb.models import student_checkpoint
    except ImportError as e:
        return None, f'lion_nb.models is not available yet ({e})'
    try: return Path(student_checkpoint()), 'lion_nb.models.student_checkpoint()'
    except Exception as e:
        return None, f'student_checkpoint() failed: {type(e).__name__}: {e}'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', help='a checkpoint folder (default: the embedded student)')
    ap.add_argument('--max-new-tokens', type=int, default=64); ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--threads', type=int, default=1, help='torch threads for both arms (1 avoids oversubscription on a shared 2-core machine)')
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    ckpt, how = checkpoint(a.model)
    if ckpt is None:
        print(f'student_generation: the embedded student is not ready: {how}. Run `lion_nb models prepare`, or pass --model CKPT.')
        print(json.dumps({'bench': 'student_generation', 'skipped': True, 'reason': how}))
        return 2
    import torch
    from lion_nb.core import ModelSpec
    from lion_nb.llm import answer_requests, make_client
    from lion_nb.core import Instruction
    torch.set_num_threads(a.threads)
    reqs = answer_requests([Instruction(id=f'p{i:02d}', instruction=p) for i, p in enumerate(PROMPTS)], role='student',
                           temperature=0.0, max_tokens=a.max_new_tokens)
    spec = ModelSpec(backend='hf', model=str(ckpt), concurrency=a.batch_size)
    batched = make_client(spec, role='student').load()
    single = make_client(spec, role='student', batch_size=1); single.model, single.tokenizer, single.eos_ids = batched.model, batched.tokenizer, batched.eos_ids
    batched.run(reqs[:2])                                  # warm-up (first-call overheads) for both paths
    t0 = time.monotonic(); rb = batched.run(reqs); tb = time.monotonic() - t0
    print(f'batched: {tb:.1f} s; now one prompt at a time...', file=sys.stderr, flush=True)
    t0 = time.monotonic(); rs = single.run(reqs); ts = time.monotonic() - t0
    tok_b = sum(r.completion_tokens for r in rb); tok_s = sum(r.completion_tokens for r in rs)
    same = [x.text == y.text for x, y in zip(rb, rs)]
    tps_b, tps_s = tok_b/tb, tok_s/ts
    speedup = tps_b/tps_s
    rows = [('checkpoint', f'{ckpt} ({how})'), ('prompts', f'{len(reqs)}, greedy, max {a.max_new_tokens} new tokens'),
            (f'batched (batch {a.batch_size})', f'{tok_b} tokens in {tb:.1f} s = {tps_b:.1f} tok/s'),
            ('one at a time', f'{tok_s} tokens in {ts:.1f} s = {tps_s:.1f} tok/s'),
            ('speed-up (tokens/s)', f'{speedup:.2f}x'), ('identical outputs', f'{sum(same)}/{len(same)}'),
            ('finish reasons', str({f: sum(r.finish_reason == f for r in rb) for f in ('stop', 'length')})),
            ('torch threads', str(torch.get_num_threads()))]
    w = max(len(r[0]) for r in rows)
    print('Student generation: batched vs one prompt at a time')
    for k, v in rows: print(f'  {k:<{w}}  {v}')
    ok = all(same) and speedup >= 5
    print(f"  bar: identical outputs and >= 5x tokens/s -> {'PASS' if ok else 'FAIL'}")
    if not all(same):
        i = same.index(False); print(f'  first difference, {rb[i].key}:\n    batched: {rb[i].text!r}\n    single:  {rs[i].text!r}')
    print(json.dumps({'bench': 'student_generation', 'prompts': len(reqs), 'max_new_tokens': a.max_new_tokens, 'batch_size': a.batch_size,
                      'batched_s': round(tb, 2), 'single_s': round(ts, 2), 'batched_tokens': tok_b, 'single_tokens': tok_s,
                      'batched_tok_s': round(tps_b, 2), 'single_tok_s': round(tps_s, 2), 'speedup': round(speedup, 2),
                      'identical': sum(same), 'pass': ok}))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
