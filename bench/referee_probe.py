"""How well does each embedded model referee? The probe (`lion_nb.probe`) on our own reference answers.

For each packaged GGUF, the real llama.cpp server reviews known-better pairs (the reference answer against an
answer to another instruction, its own first fifth, and an empty answer) in both orders, through the real LLM
layer and the discrimination stage's prompt, parser and repairs. Prints a table, then one JSON line.

    python bench/referee_probe.py [--models qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct] [--n 6]
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

from lion_nb import models  # noqa: E402
from lion_nb.core import ModelSpec  # noqa: E402
from lion_nb.discrimination import RefereeSettings  # noqa: E402
from lion_nb.llm import make_client  # noqa: E402
from lion_nb.probe import demo_probe_items, probe_pairs, run_probe  # noqa: E402


def probe_model(name: str, n: int, out: Path, max_tokens: int) -> dict:
    gguf = models.packaged_gguf(name)
    t0 = time.time()
    url = models.ensure_server(gguf)
    spec = ModelSpec(backend='openai', model=name, base_url=url, concurrency=4, timeout_s=1800, max_retries=1)
    client = make_client(spec, role='referee', stage='probe', cache_dir=out/'cache', usage_log=out/'usage.jsonl')
    settings = RefereeSettings(temperature=0.2, max_tokens=max_tokens, repair_retries=1, model=name)
    pairs = probe_pairs(demo_probe_items(), n=n, seed=0)
    try:
        s = run_probe(pairs, client, settings, out, progress=lambda m: print(f'  {name}: {m}', file=sys.stderr))
    finally:
        models.stop_server(models.state_for(gguf))
    s['seconds'] = round(time.time() - t0, 1)
    s['reviews'] = 2 * len(pairs)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='+', default=list(models.GGUFS))
    ap.add_argument('--n', type=int, default=6, help='instructions (each gives 3 known-better pairs)')
    ap.add_argument('--max-tokens', type=int, default=320)
    a = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            rows[name] = probe_model(name, a.n, Path(d)/name, a.max_tokens)
    print(f"{'referee':<30} {'accuracy':>8} {'other':>6} {'trunc':>6} {'empty':>6} {'ties':>6} "
          f"{'consist':>7} {'gap':>6} {'unscored':>8} {'s/review':>8}")
    for name, s in rows.items():
        p, k = s['probe'], s['probe']['per_kind']
        print(f"{name:<30} {p['accuracy']:>8} {k.get('other')!s:>6} {k.get('truncated')!s:>6} {k.get('empty')!s:>6} "
              f"{p['tie_share']!s:>6} {p['position_consistency']!s:>7} {p['mean_gap']!s:>6} {p['unscored']:>8} "
              f"{s['seconds'] / s['reviews']:>8.1f}")
    print(json.dumps({'bench': 'referee_probe', 'n': a.n,
                      'results': {k: {**v['probe'], 'seconds': v['seconds'], 'passed': v['passed']} for k, v in rows.items()}}))


if __name__ == '__main__':
    main()
