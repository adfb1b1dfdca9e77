"`lion_nb study --summarise` over two seeds: seed-level intervals, and a verdict only where they exclude 0."
import json, os, random, sys
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lion_nb.core import RunDir, read_json, write_jsonl  # noqa: E402
from lion_nb.evaluation import JUDGE_ORDERS  # noqa: E402
from lion_nb.study import arm_dirs, study_cli  # noqa: E402


def _final_eval(root: Path, scores: list[tuple[float, float]]):
    "A run folder whose final evaluation (iteration 2) holds these (student, teacher) scores on Vicuna-80."
    rows = [dict(set='vicuna80', id=f'v{i}', candidate='iter_2', order=o, status='done', cand_score=c, opp_score=t)
            for i, (c, t) in enumerate(scores) for o in JUDGE_ORDERS]
    write_jsonl(RunDir(root).stage_dir(2, 'evaluation')/'verdicts.jsonl', rows)


def test_two_disagreeing_seeds_show_nothing_over_seeds(tmp_path, capsys):
    """Seed 0: the Lion arm's student scores 1-2 points more per item; seed 1: +1 and -1 in turn. The items pooled
    over both seeds exclude 0 (the old verdict, 'lion is better'); the seed-level intervals do not, so the study
    prints 'not shown, 2 seeds' and no claim."""
    rng = random.Random(1)
    for seed in (0, 1):
        base = [(rng.randint(4, 7), 8) for _ in range(30)]
        gain = [rng.choice([1, 2, 2]) if seed == 0 else (-1) ** i for i in range(30)]
        lion, ctl = arm_dirs(tmp_path, seed)
        _final_eval(lion, [(c + g, t) for (c, t), g in zip(base, gain)])
        _final_eval(ctl, base)
    assert study_cli(['--config', 'unused.yaml', '--seeds', '0', '1', '--out', str(tmp_path), '--summarise']) == 0
    out = capsys.readouterr().out
    v = read_json(tmp_path/'study.json')['sets']['vicuna80']
    assert v['pooled']['lo'] > 0                                               # items only: it excludes 0
    assert v['seed_level']['bootstrap']['lo'] < 0 and v['seed_level']['t']['lo'] < 0
    assert v['seed_level']['bootstrap']['n'] == 2 and v['seed_level']['shared_questions'] == 30
    assert v['verdict'].endswith('not shown, 2 seeds')
    assert 'not shown, 2 seeds (bootstrap over seeds, then items)' in out and 't interval over the per-seed' in out
    table = '\n'.join(out.strip().splitlines()[:-1])          # the JSON line keeps each seed's own verdict
    assert 'is better' not in table and 'lion ahead' not in table
    assert json.loads(out.strip().splitlines()[-1])['sets']['vicuna80']['verdict'] == v['verdict']
