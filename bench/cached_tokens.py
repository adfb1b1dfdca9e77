"""Cached prompt tokens and the Batch API queue, end to end against the stand-in (`lion_nb.testing`), priced.

A referee of your own whose fixed rubric (instructions and worked examples, about 1,300 tokens) comes before the
request and the two answers, as lion_nb's judges put theirs: 40 reviews through the chat endpoint and 40 through
the Batch API, under a queue of 8,000 enqueued input tokens (so the batches go in waves). The stand-in's prefix cache
follows OpenAI's rule (prefixes from 1,024 tokens, in steps of 128, per model), so every review but the very first
has 1,152 of its prompt tokens cached (the Batch API's reviews find the rubric the chat reviews left in the cache). Prices are illustrative (USD per million tokens: 1.00 prompt, 0.10 cached
prompt, 4.00 completion; the Batch API half of each). It prints the run's usage table (`summarise_usage`), then one
JSON line.

    python bench/cached_tokens.py
"""
from __future__ import annotations
import json, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'))
from lion_fixtures import lion_reply                       # noqa: E402  (the scripted referee)
from lion_nb.core import ModelSpec                         # noqa: E402
from lion_nb.judging import load_judge              # noqa: E402
from lion_nb.llm import ChatRequest, make_client, summarise_usage   # noqa: E402
from lion_nb.testing import serve                          # noqa: E402

PRICES = dict(price_in_per_mtok=1.0, price_cached_in_per_mtok=0.1, price_out_per_mtok=4.0)
EXAMPLE = ("Example {i}. Request: name a prime number. Answer 1: 7. Answer 2: 9. Answer 1 is right and Answer 2 "
           "is wrong (9 = 3 x 3), so Answer 1 scores 9 and Answer 2 scores 2. ")


def requests(n: int, tag: str) -> list[ChatRequest]:
    "Reviews by lion_nb's referee with a long rubric of worked examples in front of its instructions."
    judge = load_judge('default/referee')
    rubric = 'Worked examples of good judging:\n' + ''.join(EXAMPLE.format(i=i) for i in range(1, 26)) + '\n\n'
    return [ChatRequest(f'{tag}{i}', [{'role': 'system', 'content': judge.system},
                                      {'role': 'user', 'content': rubric + judge.messages(
                                          question=f'Name {i} fruits.', answer_1=f'Answer to: Name {i} fruits.',
                                          answer_2='apples')[-1]['content']}], temperature=0.2, max_tokens=64)
            for i in range(n)]


def main() -> int:
    with tempfile.TemporaryDirectory() as d, serve(reply=lion_reply, batch_queue_tokens=8_000) as srv:
        usage = Path(d)/'usage.jsonl'
        for stage, batch in (('chat', False), ('batch', True)):
            spec = ModelSpec(backend='openai', model='referee-model', base_url=srv.base_url, batch_api=batch,
                             batch_queue_tokens=8_000, concurrency=1, **PRICES)
            c = make_client(spec, role='referee', stage=stage, cache_dir=Path(d)/stage, usage_log=usage,
                            batch_poll_s=0.01)
            out = c.run(requests(40, stage))
            assert all(r.status == 'done' for r in out), [r.error for r in out if r.status != 'done'][:2]
        t = summarise_usage(usage, by=('role', 'stage', 'model'))
        st = srv.stats()
    print(t.to_string(index=False))
    tot = t.iloc[-1]
    full = float(tot['cost_usd'] + tot['cached_saving_usd'])
    print(f"\ncached prompt tokens: {int(tot['cached_tokens']):,} of {int(tot['prompt_tokens']):,}; "
          f"saved ${tot['cached_saving_usd']:.4f} of ${full:.4f} ({tot['cached_saving_usd'] / full:.0%}); "
          f"Batch API queue: peak {st['queue_peak'].get('referee-model', 0):,} of 8,000 tokens, "
          f"{st['batches_created']} batches, {st['queue_refused']} refused")
    print(json.dumps({'prompt_tokens': int(tot['prompt_tokens']), 'cached_tokens': int(tot['cached_tokens']),
                      'reasoning_tokens': int(tot['reasoning_tokens']), 'cost_usd': float(tot['cost_usd']),
                      'cached_saving_usd': float(tot['cached_saving_usd']), 'batches': st['batches_created'],
                      'queue_peak': st['queue_peak'], 'queue_refused': st['queue_refused']}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
