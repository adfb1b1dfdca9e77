"""Benchmark: the exact ROUGE-L filter (lion_nb.dedup) against the rouge-score reference scan.

Builds a synthetic but realistic instruction pool (70,000 by default) and 6,000 candidates, a mix of
fresh instructions and near-duplicates placed around the threshold; times our filter on every candidate
(index build included); times the reference scan (`RougeScorer(["rougeL"]).score` against the pool and the
candidates accepted before) on a sample of candidates; checks the decisions, maximum scores and nearest
items are identical on that sample; prints a table, then one JSON line.

The pool is synthesised here from templates and a Zipf-distributed vocabulary of made-up words (no
dataset is read). Alpaca-like shape: 70% one-sentence instructions, a tail of multi-sentence ones up to
~200 tokens; nearest-neighbour ROUGE-L mostly 0.4-0.7 (as in a pool that was itself filtered at 0.7).

    python bench/rouge_filter.py [--pool 70000] [--candidates 6000] [--sample 12] [--seed 0]
"""
from __future__ import annotations
import argparse, itertools, json, os, random, sys, time
from collections import Counter

from lion_nb.dedup import RougeIndex, rouge_filter, rouge_tokenize, reference_rouge_l, Decision

SYLLABLES = ("ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru "
             "sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu an en in on un ar er ir or ur").split()
OPENERS = [""] * 7 + ["Please ", "Can you ", "I want you to ", "Your task is to ", "Help me ", "Now ", "In this task, "]
QUALIFIERS = [""] * 11 + [" in the style of a {N}", " for a {A} audience", " using no more than {NUM} words",
              " and explain your reasoning", " with {NUM} examples", " as a {A} {N}", " step by step", " in a {A} tone",
              " without using the word {N}", " so that a {N} can understand it"]
BODIES = [
    "{v} {D} {A} {N} {P} {N} and {N}", "{v} {D} {N} {P} {N} {P} {NUM} sentences", "explain how {N} affects {N}",
    "tell me {D} difference between {N} and {N}", "{v} {D} {A} {N} {P} {D} following {N}",
    "write {D} {N} function that {V}s {D} {N} {P} {N}", "find out how {P} {V} {D} {N} {P} {N}",
    "list {NUM} {A} {N} that {V} {N}", "describe {D} {N} {P} {D} {A} {N} {P} {D} {N}",
    "classify {D} {N} as {A} or {A}", "rewrite {D} {N} so that it sounds more {A}",
    "explain why {N} {V} when {D} {N} is {A}", "suggest {D} {A} name {P} {D} {N} that sells {N}",
    "create {D} {N} {P} {N} who want {P} {V} {N}", "summarize {D} {N} below {P} one {N}",
    "find {D} {N} {P} {D} {N} and {V} it", "compose {D} {A} {N} {P} {D} {N} {P} {D} {N}",
    "decide whether it is {A} {P} {V} {N} {P} {N}", "generate {NUM} questions {P} {N} {P} {D} {N}",
    "convert {D} {N} {P} {D} {A} {N}", "give {D} {A} fact {P} {N}", "name {D} {N} who {V}d {D} first {N}",
    "identify {D} {N} {P} {D} sentence and {V} its {N}", "plan {D} {A} {N} {P} {NUM} {N} {P} {D} {N}",
    "translate {D} {N} {P} {N}", "provide {NUM} examples {P} {A} {N} {P} {N}",
    "{v} {N} and {N} {P} {D} {N} {P} {N}", "calculate {D} {N} {P} {D} {N} with {NUM} {N}",
    "design {D} {A} {N} that helps {N} {V} {N}", "outline {D} {A} steps {P} {V} {D} {N}",
    "predict what happens {P} {D} {N} if {D} {N} {V}s", "edit {D} {N} {P} remove every {A} {N}",
    "propose {D} {A} solution {P} {D} {N} {P} {N}", "evaluate {D} {N} {P} {N} {P} {N}",
    "debug {D} {N} that {V}s {D} {N}", "draft {D} {N} inviting {N} {P} {D} {A} {N}",
]
DETS = "the a this that each your my our some every one any".split()
PREPS = "in on for about of to into with before without from by at over under".split()
NUMS = "two three four five six seven ten".split()


class Synth:
    "Instructions from templates, with content words drawn Zipf-like from made-up vocabularies."
    def __init__(self, seed=0, n_nouns=20000, n_verbs=800, n_adjs=3000, zipf=0.8):
        rng = random.Random(seed)
        def words(n, lo, hi):
            out = set()
            while len(out) < n: out.add(''.join(rng.choice(SYLLABLES) for _ in range(rng.randint(lo, hi))))
            return sorted(out)
        self.words = {'n': words(n_nouns, 2, 4), 'v': words(n_verbs, 2, 3), 'a': words(n_adjs, 2, 3)}
        self.cum = {k: list(itertools.accumulate(1 / (i + 1) ** zipf for i in range(len(v)))) for k, v in self.words.items()}

    def word(self, rng, key):
        if key == 'NUM': return rng.choice(NUMS)
        if key == 'D': return rng.choice(DETS)
        if key == 'P': return rng.choice(PREPS)
        k = key.lower(); return rng.choices(self.words[k], cum_weights=self.cum[k])[0]

    def fill(self, rng, template):
        out = []
        for part in template.split('{'):
            if '}' in part:
                key, rest = part.split('}', 1); out += [self.word(rng, key), rest]
            else: out.append(part)
        return ''.join(out)

    def sentence(self, rng):
        s = rng.choice(OPENERS) + self.fill(rng, rng.choice(BODIES)) + self.fill(rng, rng.choice(QUALIFIERS))
        s += rng.choice(['.', '.', '.', '?', ':', '!'])
        return s[0].upper() + s[1:]

    def instruction(self, rng):
        r = rng.random(); k = 1 if r < 0.7 else 2 if r < 0.92 else 3 if r < 0.97 else rng.randint(5, 14)
        return ' '.join(self.sentence(rng) for _ in range(k))

    def mutate(self, rng, text, rate):
        "A near-duplicate: about `rate` of the words substituted, deleted or inserted."
        ws = text.split()
        for _ in range(max(1, round(rate * len(ws)))):
            op, i = rng.random(), rng.randrange(len(ws) + 1)
            if op < 0.45 and i < len(ws): ws[i] = self.word(rng, rng.choice('NVA'))
            elif op < 0.75 and i < len(ws) and len(ws) > 1: del ws[i]
            else: ws.insert(i, self.word(rng, rng.choice(['N', 'A', 'D', 'P'])))
        return ' '.join(ws)


def make_candidates(synth, rng, pool, n):
    "Fresh instructions and near-duplicates of pool items and of earlier candidates, around the threshold."
    out, kinds = [], []
    for _ in range(n):
        r = rng.random()
        if r < 0.40 or not out: c, k = synth.instruction(rng), 'fresh'
        elif r < 0.80: c, k = synth.mutate(rng, rng.choice(pool), rng.uniform(0.1, 0.5)), 'near-pool'
        elif r < 0.90: c, k = synth.mutate(rng, rng.choice(out), rng.uniform(0.1, 0.5)), 'near-candidate'
        elif r < 0.95:
            w = rng.choice(pool).split(); i = rng.randrange(len(w)); j = rng.randrange(len(w))
            w[i], w[j] = w[j], w[i]; c, k = ' '.join(w).upper(), 'reordered'   # same bag of words: the bound is loose
        else: c, k = rng.choice(pool) + rng.choice(['', '!', ' ...']), 'duplicate'
        out.append(c); kinds.append(k)
    return out, kinds


def reference_check(pool, cands, decisions, sample):
    "Rescan `sample` candidates with rouge-score against the pool + the candidates kept before each."
    kept_before, ref, t = [], {}, 0.0
    sample = set(sample)
    for i, (c, d) in enumerate(zip(cands, decisions)):
        if i in sample:
            targets = pool + kept_before
            t0 = time.perf_counter(); c0 = time.process_time()
            scores = [reference_rouge_l(p, c) for p in targets]
            t += time.perf_counter() - t0
            best = max(scores, default=0.0)
            ref[i] = (Decision(best < THRESHOLD, best, scores.index(best) if best > 0 else -1), time.perf_counter() - t0,
                      time.process_time() - c0)
        if d.kept: kept_before.append(c)
    return ref


THRESHOLD = 0.7

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--pool', type=int, default=70_000)
    ap.add_argument('--candidates', type=int, default=6_000)
    ap.add_argument('--sample', type=int, default=12, help="candidates rescanned with the reference")
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    load0 = os.getloadavg()
    rng = random.Random(a.seed); synth = Synth(a.seed)
    pool = [synth.instruction(rng) for _ in range(a.pool)]
    cands, kinds = make_candidates(synth, rng, pool, a.candidates)

    w0, c0 = time.perf_counter(), time.process_time()
    index = RougeIndex(pool)
    w_build, c_build = time.perf_counter() - w0, time.process_time() - c0
    w1, c1 = time.perf_counter(), time.process_time()
    decisions = rouge_filter(cands, index, THRESHOLD)
    w_filter, c_filter = time.perf_counter() - w1, time.process_time() - c1
    w_total, c_total = w_build + w_filter, c_build + c_filter

    # the sample: a third near the threshold, the rest spread over kept and rejected
    near = [i for i, d in enumerate(decisions) if abs(d.score - THRESHOLD) < 0.05]
    srng = random.Random(a.seed + 1)
    sample = srng.sample(near, min(len(near), a.sample // 3))
    rest = [i for i in range(len(cands)) if i not in set(sample)]
    sample += srng.sample(rest, a.sample - len(sample))
    ref = reference_check(pool, cands, decisions, sample)
    mismatches = [i for i in sample if ref[i][0] != decisions[i]]
    ref_wall = sum(r[1] for r in ref.values()) / len(ref); ref_cpu = sum(r[2] for r in ref.values()) / len(ref)
    load1 = os.getloadavg()

    ours_wall, ours_cpu = w_total / len(cands), c_total / len(cands)
    lens = [len(rouge_tokenize(p)) for p in pool[:5000]]
    kept = sum(d.kept for d in decisions)
    hist = Counter(min(9, int(d.score * 10)) for d in decisions)
    by_kind = Counter((k, d.kept) for k, d in zip(kinds, decisions))
    rows = [
        ("pool instructions", f"{len(pool):,} (mean {sum(lens)/len(lens):.1f} tokens, max {max(lens)}; vocabulary {len(index.vocab):,})"),
        ("candidates", f"{len(cands):,}: " + ', '.join(f"{k} {v}" for k, v in sorted(Counter(kinds).items()))),
        ("kept / rejected", f"{kept:,} / {len(cands) - kept:,} at ROUGE-L < {THRESHOLD}"),
        ("max ROUGE-L histogram", ' '.join(f"{b/10:.1f}:{hist.get(b, 0)}" for b in range(10))),
        ("index build", f"{w_build:.1f} s wall, {c_build:.1f} s CPU"),
        ("filter, all candidates", f"{w_filter:.1f} s wall, {c_filter:.1f} s CPU"),
        ("total (build + filter)", f"{w_total:.1f} s wall, {c_total:.1f} s CPU  (target <= 60 s)"),
        ("ours per candidate", f"{ours_wall*1e3:.2f} ms wall, {ours_cpu*1e3:.2f} ms CPU (build included)"),
        ("reference per candidate", f"{ref_wall:.2f} s wall, {ref_cpu:.2f} s CPU (rouge-score scan, {len(ref)} candidates)"),
        ("speed-up per candidate", f"{ref_wall/ours_wall:,.0f}x wall, {ref_cpu/ours_cpu:,.0f}x CPU  (target >= 400x)"),
        ("sample check", f"{len(ref) - len(mismatches)}/{len(ref)} identical (decision, max score, nearest item); "
                         f"{sum(1 for i in sample if abs(decisions[i].score - THRESHOLD) < 0.05)} within 0.05 of the threshold"),
        ("load average", f"{load0[0]:.2f} at start, {load1[0]:.2f} at end ({os.cpu_count()} CPUs; other jobs share them)"),
    ]
    w = max(len(r[0]) for r in rows)
    print("ROUGE-L filter: lion_nb.dedup vs rouge-score")
    for k, v in rows: print(f"  {k:<{w}}  {v}")
    print(json.dumps({
        "bench": "rouge_filter", "pool": len(pool), "candidates": len(cands), "threshold": THRESHOLD, "kept": kept,
        "build_s": round(w_build, 3), "filter_s": round(w_filter, 3), "total_s": round(w_total, 3), "total_cpu_s": round(c_total, 3),
        "ours_ms_per_candidate": round(ours_wall * 1e3, 3), "reference_s_per_candidate": round(ref_wall, 3),
        "speedup_wall": round(ref_wall / ours_wall, 1), "speedup_cpu": round(ref_cpu / ours_cpu, 1),
        "sample": len(ref), "sample_mismatches": len(mismatches), "loadavg": [round(load0[0], 2), round(load1[0], 2)],
        "targets_met": bool(w_total <= 60 and ref_wall / ours_wall >= 400 and not mismatches)}))
    return 1 if mismatches else 0


if __name__ == '__main__':
    sys.exit(main())
