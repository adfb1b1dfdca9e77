"""How well does each embedded model referee? The probe (`lion_nb.probe`) on our own reference answers.

For each packaged GGUF, the real llama.cpp server reviews known-better pairs (the reference answer against an
answer to another instruction, its own first fifth, and an empty answer) in both orders, through the real LLM
layer and the discrimination stage's prompt, parser and repairs. Prints a table, then one JSON line.

    python bench/referee_probe.py [--models qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct] [--n 6]
                                  [--judges default/referee default/referee_short] [--slots 4]

Each `--judges` entry is measured on the same pairs (e.g. the reasoning-first referee, the short scores-first one,
the scores read from top_logprobs); `--max-tokens` overrides each judge's own limit; `--slots` sets the server's
parallel slots (1-4).

With `--duel REFEREE`, it measures instead whether REFEREE (with the first `--judges` entry) prefers each model's
answers (as teacher, sampled at 0.7) to the untrained embedded student's (SmolLM2-135M, greedy) on `--n` demo
instructions, both orders; `--layouts chat lion` prompts the student through its chat template, and in Lion's
own `### Instruction:` layout, the base-model position of the paper's student.

With `--answers FILE` (a run's reference answers, e.g. `outputs/demo/iter_2/evaluation/answers/teacher.jsonl`),
each `--judges` entry is probed as the *evaluation* judge (`lion_nb.evaluation.judge_probe`, the demo's judge
probe) on known-better pairs built from up to `--n` of those answers, the pairs a run's judge probe draws from.
"""
import argparse, json, os, sys, tempfile, time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

from lion_nb import models  # noqa: E402
from lion_nb.core import Answer, ModelSpec, ProbeConfig, iter_jsonl  # noqa: E402
from lion_nb.data import demo_instructions  # noqa: E402
from lion_nb.discrimination import RefereeSettings, pairs_from_answers, review_pairs, run_probe, score_items  # noqa: E402
from lion_nb.judging import load_judge  # noqa: E402
from lion_nb.llm import answer_pool, make_client  # noqa: E402
from lion_nb.evaluation import judge_probe  # noqa: E402
from lion_nb.probe import demo_probe_items, duel_metrics, probe_pairs, right_answers  # noqa: E402


SLOTS = 4   # the servers' parallel slots (--slots)

def served_client(name: str, role: str, out: Path):
    "A client for the packaged GGUF `name` behind its own local server (started if needed)."
    url = models.ensure_server(models.packaged_gguf(name), models.ServerSettings(n_parallel=SLOTS))
    spec = ModelSpec(backend='openai', model=name, base_url=url, concurrency=4, timeout_s=1800, max_retries=1)
    return make_client(spec, role=role, stage='probe', cache_dir=out/'cache', usage_log=out/'usage.jsonl')


@contextmanager
def served(name: str, role: str, out: Path):
    "`served_client` for the packaged GGUF `name`, its server stopped afterwards."
    client = served_client(name, role, out)
    try: yield client
    finally: models.stop_server(models.state_for(models.packaged_gguf(name)))


def referee_settings(judge: str, model: str, max_tokens=None) -> RefereeSettings:
    "The referee's settings for `judge` (set/name): its own temperature and max_tokens unless `max_tokens` is given."
    j = load_judge(judge)
    return RefereeSettings(judge=j, temperature=j.config.temperature, max_tokens=max_tokens or j.config.max_tokens,
                           seed=0, repair_retries=1, structured=False, model=model)


def probe_model(name: str, n: int, out: Path, max_tokens=None, judge: str = 'default/referee') -> dict:
    settings = referee_settings(judge, name, max_tokens)
    pairs = probe_pairs(demo_probe_items(), n=n, seed=0)
    with served(name, 'referee', out) as client:     # started before the clock: the server's start is not a review
        t0 = time.time()
        s = run_probe(pairs, client, settings, out, ProbeConfig().min_accuracy, 'warn', progress=lambda m: print(f'  {name}: {m}', file=sys.stderr))
    return {**s, 'seconds': round(time.time() - t0, 1), 'reviews': 2 * len(pairs)}


def probe_judge(name: str, answers: Path, n: int, out: Path, judge: str) -> dict:
    "`judge` (served by `name`) as the evaluation judge, on known-better pairs from up to `n` of `answers`."
    pairs = probe_pairs(right_answers([Answer(**r) for _, r in iter_jsonl(answers)]), n=n, seed=0)
    with served(name, 'judge', out) as client:
        t0 = time.time()
        s = judge_probe(pairs, client, load_judge(judge), seed=0, log_path=out/'verdicts.jsonl')
    return {**s, 'seconds': round(time.time() - t0, 1), 'reviews': 2 * len(pairs)}


def duel(teacher: str, layout: str, referee: str, judge: str, n: int, out: Path, max_tokens=None) -> dict:
    """The referee on `teacher` vs the untrained student prompted in `layout` (chat or lion), over `n` demo
    instructions (the same `n` for every row: seed 0)."""
    import random
    pool = random.Random(0).sample(demo_instructions(), n)
    t_ans = answer_pool(pool, served_client(teacher, 'teacher', out/teacher), out/teacher/'teacher.jsonl',
                        role='teacher', temperature=0.7, max_tokens=128, seed=0)
    student = make_client(ModelSpec(backend='hf', model=models.STUDENT_NAME, concurrency=8), role='student',
                          cache_dir=out/layout/'cache', template=layout)
    s_ans = answer_pool(pool, student, out/layout/'student.jsonl', role='student', temperature=0.0, max_tokens=128)
    pairs, _ = pairs_from_answers(pool, t_ans, s_ans, categorize=lambda r: r.category)
    client = served_client(referee, 'referee', out/teacher/layout)
    t0 = time.time()
    reviews = review_pairs(pairs, client, referee_settings(judge, referee, max_tokens),
                           out/teacher/layout/'reviews.jsonl')
    scored, unscored = score_items(pairs, reviews, tau=1.0)
    return {**duel_metrics(scored, unscored), 's_per_review': round((time.time() - t0) / (2 * n), 1),
            'teacher_words': sum(len(a.output.split()) for a in t_ans) / n,
            'student_words': sum(len(a.output.split()) for a in s_ans) / n}


def main_duel(a):
    rows, judge = {}, a.judges[0]
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            for layout in a.layouts:
                rows[f'{name} {layout}'] = duel(name, layout, a.duel, judge, a.n, Path(d), a.max_tokens)
        models.stop_all_servers()
    print(f"referee {a.duel} ({judge}): teacher vs the untrained student on {a.n} demo instructions")
    print(f"{'teacher, student layout':<36} {'teacher ahead':>13} {'mean gap':>8} {'unscored':>8} {'words T/S':>10} "
          f"{'s/review':>8}")
    for name, s in rows.items():
        print(f"{name:<36} {s['teacher_ahead']!s:>13} {s['mean_gap']!s:>8} {s['unscored']:>8} "
              f"{s['teacher_words']:>5.0f}/{s['student_words']:<4.0f} {s['s_per_review']:>8}")
    print(json.dumps({'bench': 'referee_duel', 'referee': a.duel, 'judge': judge, 'n': a.n, 'results': rows}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='+', default=list(models.GGUFS))
    ap.add_argument('--n', type=int, default=6, help='instructions (each gives 3 known-better pairs)')
    ap.add_argument('--max-tokens', type=int, default=None, help="override each judge's max_tokens")
    ap.add_argument('--judges', nargs='+', default=['default/referee'], help='referee judges to probe (set/judge)')
    ap.add_argument('--slots', type=int, default=4, choices=range(1, 9), help="the llama.cpp servers' parallel slots")
    ap.add_argument('--duel', metavar='REFEREE', choices=list(models.GGUFS),
                    help='measure teacher-vs-student preference with this referee instead of the probe')
    ap.add_argument('--answers', type=Path, metavar='FILE',
                    help="probe the judges as evaluation judges on pairs built from this file's answers")
    ap.add_argument('--layouts', nargs='+', default=['chat'], choices=['chat', 'alpaca', 'lion'],
                    help="--duel: the student's prompt layouts to compare")
    a = ap.parse_args()
    global SLOTS
    SLOTS = a.slots
    if a.duel: return main_duel(a)
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            for j in a.judges:
                out = Path(d)/name/j.replace('/', '_')
                rows[f'{name} {j}'] = (probe_judge(name, a.answers, a.n, out, j) if a.answers else
                                       probe_model(name, a.n, out, a.max_tokens, j))
    print(f"{'referee and judge':<55} {'accuracy':>8} {'other':>6} {'trunc':>6} {'empty':>6} {'ties':>6} "
          f"{'consist':>7} {'gap':>6} {'unscored':>8} {'s/review':>8}")
    for name, s in rows.items():
        p, k = s['probe'], s['probe']['per_kind']
        print(f"{name:<55} {p['accuracy']:>8} {k.get('other')!s:>6} {k.get('truncated')!s:>6} {k.get('empty')!s:>6} "
              f"{p['tie_share']!s:>6} {p['position_consistency']!s:>7} {p['mean_gap']!s:>6} {p['unscored']:>8} "
              f"{s['seconds'] / s['reviews']:>8.1f}")
    print(json.dumps({'bench': 'judge_probe' if a.answers else 'referee_probe', 'n': a.n, 'slots': a.slots,
                      'answers': str(a.answers) if a.answers else None,
                      'results': {k: {**v['probe'], 'seconds': v['seconds'], 'passed': v['passed']} for k, v in rows.items()}}))


if __name__ == '__main__':
    main()
