"""Write a synthetic instruction file in Alpaca's format and of Alpaca's size and shape (52,002 entries by default).

Alpaca 52K itself is not available offline, so the paper rehearsal (`bench/paper_rehearsal.py`) runs on this file.
What it imitates, so that the stages meet realistic work:
- the shape: a JSON list of `{instruction, input, output}`, entries on their own lines;
- lengths: instructions of 3-40 words (median about 12), about 40% of entries with an input (median about
  12 words, a long tail to a few hundred), outputs from one word to a few hundred (median about 35);
- the task mix: Alpaca's opening verbs (generate, explain, describe, classify, rewrite, ...) with varied topics;
- near-duplicates: about 2% of entries repeat an earlier one with a word or two changed, and about 0.1% repeat
  one exactly (the pools stage drops exact duplicates; ROUGE-L meets the near ones).

Words are built from syllables (plus common English words), so the file holds no text from any dataset.
    python bench/synth_alpaca.py OUT.json [--n 52002] [--seed 0]
"""
from __future__ import annotations
import argparse, json, math, random, sys
from pathlib import Path

COMMON = ('the a an of to in for on with about from by as and or that this these your our its their is are be '
          'how why what which when where who best new main simple short given following each two three five').split()
VERBS = ('Generate Explain Describe Classify Rewrite Summarize List Suggest Create Write Identify Compare Translate '
         'Calculate Edit Find Give Name Outline Design Analyze Convert Predict Evaluate Brainstorm Construct').split()
OBJECTS = ('a list of', 'an example of', 'a short story about', 'a poem about', 'the difference between', 'three tips for',
           'a summary of', 'the main idea of', 'a headline for', 'a plan for', 'the meaning of', 'a definition of',
           'the causes of', 'a question about', 'a slogan for', 'the benefits of', 'an email to', 'a tweet about')
SYLLABLES = ('ka lo mi ne ra tu vo si de pa ri fo lu ga me no ta bi ke zu ha yo wi ce sa po du li mo ve '
             'ro an el is on ur ex al or in').split()

def make_words(rng: random.Random, n: int = 12_000) -> list[str]:
    "A vocabulary of `n` distinct pronounceable pseudo-words (2-4 syllables)."
    out = set()
    while len(out) < n: out.add(''.join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3, 3, 4)))))
    return sorted(out)

def _lognormal_len(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(median * math.exp(rng.gauss(0, sigma)))))

def _phrase(rng: random.Random, words: list[str], n: int) -> str:
    return ' '.join(rng.choice(COMMON) if rng.random() < 0.35 else rng.choice(words) for _ in range(n))

def make_entry(rng: random.Random, words: list[str]) -> dict:
    "One Alpaca-shaped entry with realistic lengths."
    n = _lognormal_len(rng, 12, 0.45, 3, 40)
    head = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    instruction = f"{head} {_phrase(rng, words, max(1, n - len(head.split())))}".strip() + rng.choice('..?.')
    inp = _phrase(rng, words, _lognormal_len(rng, 12, 0.9, 1, 400)).capitalize() + '.' if rng.random() < 0.4 else ''
    output = _phrase(rng, words, _lognormal_len(rng, 35, 0.9, 1, 600)).capitalize() + '.'
    return {'instruction': instruction, 'input': inp, 'output': output}

def near_duplicate(rng: random.Random, entry: dict, words: list[str]) -> dict:
    "`entry` with one or two words of its instruction changed."
    toks = entry['instruction'].split()
    for _ in range(rng.choice((1, 2))): toks[rng.randrange(1, len(toks))] = rng.choice(words)
    return {**entry, 'instruction': ' '.join(toks)}

def synth_alpaca(n: int = 52_002, seed: int = 0, near: float = 0.02, exact: float = 0.001) -> list[dict]:
    "`n` synthetic entries in Alpaca's format, with near- and exact duplicates of earlier entries."
    rng = random.Random(seed); words = make_words(rng); out = []
    for i in range(n):
        r = rng.random()
        if out and r < exact: out.append(dict(rng.choice(out)))
        elif out and r < exact + near: out.append(near_duplicate(rng, rng.choice(out), words))
        else: out.append(make_entry(rng, words))
    return out

def write_alpaca(path, entries: list[dict]) -> Path:
    "Write entries as Alpaca does: a JSON list, one entry per line block (indented)."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=4, ensure_ascii=False) + '\n', encoding='utf-8')
    return path

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('out', nargs='?', default='outputs/synth/alpaca_data.json')
    ap.add_argument('--n', type=int, default=52_002); ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    es = synth_alpaca(a.n, a.seed)
    p = write_alpaca(a.out, es)
    lens = sorted(len(e['instruction'].split()) for e in es)
    print(f"{p}: {len(es):,} entries, {p.stat().st_size / 1e6:.1f} MB; instruction words median {lens[len(lens)//2]}, "
          f"with input {sum(bool(e['input']) for e in es) / len(es):.0%}")
    print(json.dumps({'entries': len(es), 'bytes': p.stat().st_size, 'median_instruction_words': lens[len(lens)//2]}))
    sys.exit(0)
