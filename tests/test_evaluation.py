"""Evaluation end to end against a scripted local judge (`lion_nb.testing`, real HTTP, real `openai`
client): every candidate and the teacher answer through the LLM layer, the judge's replies follow fixed
rules, so relative scores, win/tie/lose, position consistency, unscored counts and reasoning accuracy are
known exactly. Also: the loaders on the public data ($LION_DATA_DIR) and on small BBH files we write."""
import json, os, re, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import last_user_text, serve  # noqa: E402

from lion_nb.core import RunDir, parse_config, user_message, write_json
from lion_nb.evaluation import (category_table, closing_note, evaluate_cli, reasoning_table, wtl_table, load_eval_set,
                                metrics_history, run_evaluation, sample_items, summary_table)
from lion_nb.reasoning import score_reasoning

os.environ.setdefault('TQDM_DISABLE', '1')
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get('LION_DATA_DIR') or ROOT.parent/'shared'/'data')
pytestmark = pytest.mark.skipif(not (DATA/'eval'/'vicuna80'/'question.jsonl').exists(), reason='public data not found ($LION_DATA_DIR)')

# ---------------------------------------------------------------------------------------------- data
BBH_FILES = {
    'boolean_expressions': [{'input': 'not ( True ) and ( True ) is', 'target': 'False'},
                            {'input': 'True and not not ( not False ) is', 'target': 'True'},
                            {'input': 'not True or ( False and True ) is', 'target': 'False'}],
    'date_understanding': [{'input': f'Question {i}?\nOptions:\n(A) 01/0{i}/2020\n(B) 02/0{i}/2020\n(C) 03/0{i}/2020', 'target': t}
                           for i, t in enumerate(['(A)', '(B)', '(A)', '(C)'], 1)],
}

@pytest.fixture
def data_root(tmp_path):
    "A data folder: the public eval files (symlinks, nothing copied) but BBH: two small task files we write."
    root = tmp_path/'data'; (root/'eval'/'bbh').mkdir(parents=True)
    for d in (DATA/'eval').iterdir():                    # every public set but BBH, whose two tasks are ours
        if d.is_dir() and d.name != 'bbh': (root/'eval'/d.name).symlink_to(d, target_is_directory=True)
    for t, ex in BBH_FILES.items(): (root/'eval'/'bbh'/f'{t}.json').write_text(json.dumps({'examples': ex}))
    return root


def test_loaders_on_public_data(data_root):
    v = load_eval_set('vicuna80', data_root)
    assert len(v) == 80 and len({x.category for x in v}) == 9
    u = load_eval_set('user252', data_root)
    assert len(u) == 252 and len({x.category for x in u}) == 71 and sum(bool(x.input) for x in u) > 100
    a = load_eval_set('agieval', data_root)
    assert {x.task for x in a} == {'aqua-rat', 'logiqa-en', 'lsat-ar', 'lsat-lr', 'lsat-rc', 'sat-math', 'sat-en', 'sat-en-without-passage'}
    assert all(x.kind == 'mc' for x in a) and len(a) > 2500
    b = load_eval_set('bbh', data_root)
    assert [(x.task, x.kind, x.answer) for x in b][:4] == [('boolean_expressions', 'free', 'False'), ('boolean_expressions', 'free', 'True'),
                                                           ('boolean_expressions', 'free', 'False'), ('date_understanding', 'mc', 'A')]
    assert score_reasoning(b[3], 'Looking at it, the answer is (A).') == ('A', True)
    assert score_reasoning(b[4], 'A') == ('A', False)
    assert score_reasoning(b[0], 'So the answer is False.') == ('False', True)   # BBH: the official answer string
    assert len(load_eval_set('demo')) == 20


# ------------------------------------------------------------------------------------ scripted server
T_ANS, G_ANS, B_ANS = 'T-ANS alpha beta gamma delta', 'G-ANS one two three four five six seven', 'B-ANS meh'
ANSWER = {'teacher': T_ANS, 'good': G_ANS, 'bad': B_ANS}
MC_REPLY = {'teacher': 'B', 'good': 'Let me see. The answer is (A).', 'bad': '???'}
FREE_REPLY = {'teacher': 'False', 'good': 'The answer is True.', 'bad': '???'}
VICUNA_CAT: dict = {}          # question text -> category (filled by the test)


def who(text: str) -> str:
    return {'T-ANS': 'teacher', 'G-ANS': 'good', 'B-ANS': 'bad'}[text]


def shown(prompt: str) -> tuple[str, str]:
    "Which models' answers the judge sees, first and second."
    pos = sorted((prompt.index(m), m) for m in ('T-ANS', 'G-ANS', 'B-ANS') if m in prompt)
    return who(pos[0][1]), who(pos[1][1])


def score_of(model: str, cat: str, first: bool) -> int:
    "The scripted judge's score: teacher 8; good 6 (9 on coding; 8 on writing when shown first); bad 4."
    if model == 'teacher': return 8
    if model == 'good': return 9 if cat == 'coding' else 8 if (cat == 'writing' and first) else 6
    return 4


def score_reply(prompt: str) -> str:
    q = prompt.split('[Question]\n', 1)[1].split('\n\n[Answer 1]', 1)[0]
    cat = VICUNA_CAT.get(q, 'demo')
    a, b = shown(prompt)
    if cat == 'fermi' and a == 'bad': return 'Both answers have merit, hard to say.'       # unreadable: never scored
    return f'Answer 1 is ... Answer 2 is ...\nScores: {score_of(a, cat, True)} {score_of(b, cat, False)}'


def pair_question(prompt: str) -> str:
    return prompt.split('[Instruction]\n', 1)[1].split('\n\n[Response A]', 1)[0]


def pair_reply(prompt: str) -> str:
    q = pair_question(prompt)
    a, b = shown(prompt)
    cand = a if a != 'teacher' else b
    if cand == 'good':   # good wins outright on even-length questions, else the judge just picks the first shown
        return f"Verdict: [[{'A' if a == 'good' else 'B'}]]" if len(q) % 2 == 0 else 'Response A reads better. [[A]]'
    if len(q) % 7 == 0 and b == 'bad': return 'Both responses are acceptable in their own way.'   # unreadable
    return f"[[{'A' if a == 'teacher' else 'B'}]]"


def reply(body: dict) -> str:
    text = last_user_text(body)
    model = body['model']
    if model == 'judge':
        return score_reply(text) if text.startswith('Here is a question and two answers') else pair_reply(text)
    if 'Answer with the letter of the correct option' in text: return MC_REPLY[model]
    if 'Give only the final answer' in text: return FREE_REPLY[model]
    return ANSWER[model]


def make_cfg(srv, data_root, samples) -> dict:
    m = lambda name: {'backend': 'openai', 'model': name, 'base_url': srv.base_url, 'concurrency': 16, 'timeout_s': 10, 'max_retries': 1}
    return {'name': 't', 'seed': 3, 'data_dir': str(data_root),
            'models': {'judge': m('judge'), 'teacher': m('teacher'), 'good': m('good'), 'bad': m('bad'),
                       'student': {'backend': 'hf', 'model': 'not-used-here'}},
            'roles': {'teacher': 'teacher', 'referee': 'judge', 'generator': 'judge', 'judge': 'judge', 'student': 'student'},
            'eval': {'sets': ['vicuna80', 'user252', 'agieval', 'bbh'], 'samples': samples, 'reference': 'teacher', 'max_new_tokens': 64},
            'probe': {'judge_items': 0}}   # the judge's probe has its own test below


def expected_relative(items, cand: str) -> tuple[float, dict, int]:
    "Relative score, per category, and unscored reviews, straight from the scripted rules."
    c_sum, r_sum, unscored = {}, {}, 0
    for it in items:
        cat = it.category
        for cand_first in (True, False):
            if cand == 'bad' and cat == 'fermi' and cand_first: unscored += 1; continue
            c_sum[cat] = c_sum.get(cat, 0) + score_of(cand, cat, cand_first)
            r_sum[cat] = r_sum.get(cat, 0) + 8
    overall = round(100 * sum(c_sum.values()) / sum(r_sum.values()), 2)
    return overall, {c: round(100 * c_sum[c] / r_sum[c], 2) for c in sorted(c_sum)}, unscored


def test_scripted_judge_exact_metrics(tmp_path, data_root):
    samples = {'vicuna80': 48, 'user252': 30, 'agieval': 2}
    with serve(reply) as srv:
        cfg = parse_config(make_cfg(srv, data_root, samples))
        vic = sample_items(load_eval_set('vicuna80', data_root), 48, 3, 'vicuna80')
        VICUNA_CAT.clear(); VICUNA_CAT.update({user_message(x.instruction, x.input): x.category for x in vic})
        run = tmp_path/'run'
        m = run_evaluation(cfg, RunDir(run), 1, models={'bad': 'bad', 'good': 'good'})
        n_first = srv.n_chat

        # --- Vicuna-80: relative score, per category, unscored reviews, position consistency
        for cand in ('good', 'bad'):
            overall, per_cat, unscored = expected_relative(vic, cand)
            got = m['models'][cand]['vicuna80']
            assert got['relative_score'] == overall and got['per_category'] == per_cat, cand
            assert got['unscored'] == unscored and got['reviews_scored'] == 96 - unscored and got['failed'] == 0
        n_writing = sum(x.category == 'writing' for x in vic)
        good = m['models']['good']['vicuna80']
        # good vs teacher: lose on every order, except coding (win) and writing when shown first (tie)
        assert good['position_consistency'] == round((48 - n_writing) / 48, 4)
        assert m['models']['bad']['vicuna80']['pairs_read'] == 48 - sum(x.category == 'fermi' for x in vic)
        assert m['final_model'] == 'good' and m['vicuna80'] == good        # the last candidate is the final model

        # --- 252: win/tie/lose with both orders, disagreement = tie, unreadable items counted apart
        u = sample_items(load_eval_set('user252', data_root), 30, 3, 'user252')
        qs = [user_message(x.instruction, x.input) for x in u]
        even = sum(len(q) % 2 == 0 for q in qs)
        g = m['models']['good']['user252']
        assert (g['win'], g['tie'], g['lose'], g['n']) == (even, 30 - even, 0, 30)
        assert g['position_consistency'] == round(even / 30, 4)
        assert g['first_position_win_rate'] == round((even + 2 * (30 - even)) / 60, 4)
        assert g['win_rate'] == round((even + 0.5 * (30 - even)) / 30, 4)
        sevens = sum(len(q) % 7 == 0 for q in qs)
        b = m['models']['bad']['user252']
        assert (b['win'], b['tie'], b['lose'], b['unscored_items'], b['unscored']) == (0, 0, 30 - sevens, sevens, sevens)
        assert m['user252']['win'] == even and sum(sum(c.values()) for c in g['per_category'].values()) == 30
        # every good answer is 3 words longer than the teacher's: one bucket; no length spread, so LC ~ raw
        lv = g['length']
        assert lv['buckets']['-10..10']['n'] == 60 and lv['mean_length_diff'] == 3.0
        assert abs(lv['lc_win_rate'] - lv['raw_win_rate']) < 0.01

        # --- reasoning: fixed replies, so accuracy is the share of gold answers equal to the reply
        ag = sample_items(load_eval_set('agieval', data_root), 2, 3, 'agieval')
        bb = load_eval_set('bbh', data_root)
        def acc(items, want_mc, want_free):
            out = {}
            for t in sorted({x.task for x in items}):
                xs = [x for x in items if x.task == t]
                out[t] = round(100 * sum(x.answer == (want_mc if x.kind == 'mc' else want_free) for x in xs) / len(xs), 2)
            return out
        for cand, mc, free in (('good', 'A', 'True'), ('teacher', 'B', 'False')):
            r = m['models'][cand]['reasoning']
            assert r['agieval'] == acc(ag, mc, free) and r['bbh'] == acc(bb, mc, free), cand
            for s_ in ('agieval', 'bbh'):            # each benchmark averaged over its own tasks, never pooled
                assert r[f'{s_}_average'] == round(sum(r[s_].values()) / len(r[s_]), 2)
            assert 'average' not in r and r['unextracted'] == {'agieval': 0, 'bbh': 0}
        r = m['models']['bad']['reasoning']
        assert r['agieval_average'] == r['bbh_average'] == 0.0 and r['unextracted'] == {'agieval': 16, 'bbh': 7}
        assert len(r['agieval']) == 8 and m['reasoning'] == m['models']['good']['reasoning']

        # --- honesty: lengths in words, judge totals
        assert m['models']['good']['mean_length'] == {'vicuna80': 8.0, 'user252': 8.0}
        assert m['models']['teacher']['mean_length'] == {'vicuna80': 5.0, 'user252': 5.0}
        assert m['judge']['verdicts'] == 2 * 2 * (48 + 30)
        assert m['judge']['unscored'] == expected_relative(vic, 'bad')[2] + sevens

        # --- files: metrics.json (the shape the model card reads), plots, verdicts, answers, DONE
        ev = RunDir(run).stage_dir(1, 'evaluation')
        saved = json.loads((ev/'metrics.json').read_text())
        assert set(saved) >= {'vicuna80', 'user252', 'reasoning', 'models'}
        assert isinstance(saved['vicuna80']['relative_score'], float) and set(saved['user252']) >= {'win', 'tie', 'lose'}
        assert set(saved['reasoning']) >= {'agieval', 'bbh', 'agieval_average', 'bbh_average'}
        for png in ('relative_score.png', 'win_tie_lose.png', 'reasoning.png', 'history.png'):
            assert (ev/png).stat().st_size > 5000, png
        assert sum(1 for _ in open(ev/'verdicts.jsonl')) == 312 and RunDir(run).is_done(1, 'evaluation')
        assert list(summary_table(m).index) == ['bad', 'good', 'teacher']
        ct = category_table(m)
        assert list(ct.columns) == ['bad', 'good'] and ct.loc['overall', 'good'] == good['relative_score']
        assert wtl_table(m).loc['good', 'win'] == even and reasoning_table(m).loc['bbh average', 'teacher'] == m['models']['teacher']['reasoning']['bbh_average']
        note = closing_note(m)
        assert f"relative score **{good['relative_score']}%**" in note and f"**{even} win / {30 - even} tie / 0 lose**" in note

        # --- a re-run is answered from the cache: no request reaches the server, same metrics
        m2 = run_evaluation(cfg, RunDir(run), 1, models={'bad': 'bad', 'good': 'good'}, plots=False)
        assert srv.n_chat == n_first and m2 == m

        # --- across iterations and runs
        m3 = run_evaluation(cfg, RunDir(run), 2, models={'base': 'bad', 'iter_2': 'good'}, sets=['user252'], samples={'user252': 10}, plots=False)
        hist = metrics_history(run)
        assert [k for k, _ in hist] == [1, 2] and hist[1][1]['win_rate'] == m3['user252']['win_rate']
        other = tmp_path/'random_arm'
        write_json(RunDir(other).stage_dir(1, 'evaluation')/'metrics.json', m)
        out = tmp_path/'cmp.png'
        assert evaluate_cli(['--compare', str(run), str(other), '--out', str(out)]) == 0 and out.stat().st_size > 5000


def test_cli_runs_an_evaluation(tmp_path, data_root, capsys):
    import yaml
    with serve(reply) as srv:
        cfg_path = tmp_path/'cfg.yaml'
        cfg_path.write_text(yaml.safe_dump(make_cfg(srv, data_root, {})))
        rc = evaluate_cli(['--config', str(cfg_path), '--run-dir', str(tmp_path/'run'), '--iteration', '1', '--sets', 'bbh', 'demo',
                           '--model', 'cand=good', '--no-plots'])
        assert rc == 0
        m = json.loads((RunDir(tmp_path/'run').stage_dir(1, 'evaluation')/'metrics.json').read_text())
        assert m['sets'] == {'bbh': 7, 'demo': 20} and m['final_model'] == 'cand'
        assert m['reasoning']['bbh'] == {'boolean_expressions': 33.33, 'date_understanding': 50.0}
        assert 'cand' in capsys.readouterr().out


# ---------------------------------------------------------------- reasoning scores as the official evaluations score them

def _bbh(task, answer, kind='free', opts=()):
    from lion_nb.data import ReasoningItem
    return ReasoningItem(id=f'bbh-{task}-0', benchmark='bbh', task=task, kind=kind, prompt='p', question='q',
                         options=list(opts), answer=answer)


def test_bbh_dyck_answers_made_of_brackets_count():
    from lion_nb.reasoning import score_reasoning
    item = _bbh('dyck_languages', '] ) }')
    cot = ("We should process each input one by one.\n0: empty stack\n1: { ; stack: {\n2: ( ; stack: { (\n3: [ ; stack: { ( [\n"
           "Now, we have reached the end. The final stack is \"{ ( [\".\nSo, we need \"]\", \")\", \"}\". So the answer is ] ) }.")
    assert score_reasoning(item, cot) == ('] ) }', True)            # chain of thought
    assert score_reasoning(item, '] ) }') == ('] ) }', True)         # direct
    assert score_reasoning(item, 'So the answer is ] ) ].')[1] is False
    assert score_reasoning(item, "0: empty stack\n1: { ; stack: {\n2: ( ; stack: { (\n3:")[1] is False  # cut: no answer


def test_bbh_chain_of_thought_read_after_so_the_answer_is():
    from lion_nb.reasoning import score_reasoning
    opts = ['(A) Yes', '(B) No']
    mc = _bbh('causal_judgement', 'B', 'mc', opts)
    cot = "Let's think step by step.\nHere (A) would mean the intent mattered, but it did not.\nSo the answer is (B)."
    assert score_reasoning(mc, cot) == ('(B)', True)
    assert score_reasoning(mc, cot.replace('is (B)', 'is (A)')) == ('(A)', False)   # the official answer wins over (B) above
    free = _bbh('boolean_expressions', 'False')
    assert score_reasoning(free, "not True is False; False or False is False. So the answer is False.") == ('False', True)
    assert score_reasoning(_bbh('object_counting', '6'), 'There are 6 objects.') == ('6', True)


def test_agieval_extraction_shapes():
    from lion_nb.data import ReasoningItem
    from lion_nb.reasoning import score_reasoning
    item = lambda ans: ReasoningItem(id='agieval-lsat-lr-0', benchmark='agieval', task='lsat-lr', kind='mc', prompt='p',
                                     question='q', options=['(A)first', '(B)second', '(C)third', '(D)fourth'], answer=ans)
    assert score_reasoning(item('A'), 'A. Because the argument assumes what it sets out to prove.') == ('A', True)
    assert score_reasoning(item('B'), 'Option B is correct.') == ('B', True)
    assert score_reasoning(item('C'), '(C) is the only one that weakens it.') == ('C', True)
    assert score_reasoning(item('D'), 'A. is tempting, but the answer is D.') == ('D', True)   # the explicit statement wins
    assert score_reasoning(item('A'), '(A) or (B)?')[0] is None                              # ambiguous: no prediction


def test_reasoning_averages_are_per_benchmark_with_the_23_task_subset():
    from types import SimpleNamespace
    from lion_nb.data import BBH_TASKS, ReasoningItem
    from lion_nb.reasoning import BBH_23, reasoning_metrics
    assert len(BBH_TASKS) == 27 and len(BBH_23) == 23 and 'dyck_languages' not in BBH_23 and 'snarks' in BBH_23
    items = [_bbh('snarks', 'A', 'mc', ['(A) x', '(B) y']), _bbh('word_sorting', 'a b'),
             ReasoningItem(id='agieval-sat-math-0', benchmark='agieval', task='sat-math', kind='mc', prompt='p',
                           question='q', options=['(A)1', '(B)2'], answer='B')]
    ans = {i.id: SimpleNamespace(status='done', output=o) for i, o in zip(items, ['(A)', 'b a', 'B'])}
    r = reasoning_metrics(items, ans)
    assert (r['bbh_average'], r['bbh_23_average'], r['agieval_average']) == (50.0, 100.0, 100.0) and 'average' not in r


def test_lion_review_judges_by_category():
    from lion_nb.core import Answer, Instruction
    from lion_nb.judging import load_judge
    from lion_nb.evaluation import judge_jobs, make_verdict
    items = [Instruction(id='v1', instruction='Write a haiku.', category='writing'),
             Instruction(id='v2', instruction='Reverse a list in Python.', category='coding'),
             Instruction(id='v3', instruction='Solve 3x + 10 = 5(x - 2).', category='math')]
    ans = lambda who: {i.id: Answer(id=i.id, instruction=i.instruction, output=f'{who} answer', role='x', model=who) for i in items}
    jobs = judge_jobs('vicuna80', 'score', items, 'cand', ans('cand'), 'ref', ans('ref'), load_judge('lion/review'))
    names = {j['id']: j['judge'].name for j in jobs}
    assert names == {'v1': 'lion/review', 'v2': 'lion/review_coding', 'v3': 'lion/review_math'}
    prompts = {j['id']: j['messages'][1]['content'] for j in jobs if j['order'] == 'cand_first'}
    assert 'single line containing only two values' in prompts['v1'] and 'coding abilities' in prompts['v2']
    assert 'Python tuple' in prompts['v3'] and "[The Start of Assistant 1's Answer]\ncand answer\n" in prompts['v1']
    assert all(j['judge'].config.temperature == 0.2 and j['judge'].config.max_tokens == 1024 for j in jobs)
    v = make_verdict('score', 'opp_first', '9 6\nAssistant 2 gave 3 examples; Assistant 1: 10 steps.', parser='scores_first')
    assert (v['cand_score'], v['opp_score'], v['outcome']) == (6.0, 9.0, 'lose')


def probe_aware(body: dict) -> str:
    "`reply`, and a judge that scores a probe pair (one model's answers only) by length: 1 + words // 2."
    text = last_user_text(body)
    if body['model'] == 'judge' and text.startswith('Here is a question') and sum(m in text for m in ('G-ANS', 'B-ANS')) == 0:
        a, b = (re.search(rf"\[Answer {n}\]\n(.*?)\n\[End of Answer {n}\]", text, re.S).group(1) for n in (1, 2))
        return f"Judged by length.\nScores: {min(10, 1 + len(a.split()) // 2)} {min(10, 1 + len(b.split()) // 2)}"
    return reply(body)


def test_evaluation_judge_probe_is_run_and_reported(tmp_path, data_root):
    """In the probe's iterations the evaluation judge first reviews known-better pairs made from the teacher's
    answers: right vs truncated and vs empty it gets right; vs another question's (identical) answer it ties. Below
    80% it is flagged in judge_probe.json, metrics.json and the closing note; in other iterations it is not run."""
    with serve(probe_aware) as srv:
        d = make_cfg(srv, data_root, {'vicuna80': 6, 'user252': 2, 'agieval': 1})
        d['eval']['sets'] = ['vicuna80', 'user252']; d['probe'] = {'judge_items': 2}
        cfg = parse_config(d)
        m = run_evaluation(cfg, RunDir(tmp_path/'run'), 1, models={'good': 'good'})
        jp = m['judge_probe']
        assert jp['probe']['pairs'] == 6 and jp['probe']['unscored'] == 0
        assert jp['probe']['per_kind'] == {'empty': 1.0, 'other': 0.0, 'truncated': 1.0}
        assert jp['passed'] is False and jp['message'].startswith('the judge cannot reliably tell') and jp['judge'] == 'default/review'
        assert 'use a stronger judge' in jp['message'] and 'referee' not in jp['message']
        out = RunDir(tmp_path/'run').stage_dir(1, 'evaluation')
        assert json.loads((out/'judge_probe.json').read_text()) == jp
        assert json.loads((out/'metrics.json').read_text())['judge_probe'] == jp
        assert 'judge probe: the judge cannot' in closing_note(m)
        m2 = run_evaluation(cfg, RunDir(tmp_path/'run'), 2, models={'good': 'good'})
        assert m2['judge_probe'] is None                                   # iteration 2 is not a probe iteration


def test_judge_settings_are_the_judge_folders_unless_the_config_sets_them(tmp_path, data_root):
    """The judge's requests carry its judge folder's temperature and max_tokens (not the referee's), unless the
    run configuration sets `sampling.judge_temperature` / `judge_max_tokens` explicitly."""
    seen = []
    def recording(body: dict) -> str:
        if body['model'] == 'judge': seen.append((body.get('temperature'), body.get('max_tokens')))
        return reply(body)
    with serve(recording) as srv:
        d = make_cfg(srv, data_root, {'demo': 2})
        d['eval']['sets'] = ['demo']
        d['judges'] = {'review': 'lion/review'}                       # its own: temperature 0.2, 1024 tokens
        d['sampling'] = {'referee_max_tokens': 300}                   # the referee's: not the judge's
        run_evaluation(parse_config(d), RunDir(tmp_path/'a'), 1, models={'good': 'good'}, plots=False)
        assert seen and set(seen) == {(0.2, 1024)}
        seen.clear()
        d['sampling'] = {'judge_temperature': 0.0, 'judge_max_tokens': 200}
        run_evaluation(parse_config(d), RunDir(tmp_path/'b'), 1, models={'good': 'good'}, plots=False)
        assert seen and set(seen) == {(0.0, 200)}


def test_a_zero_is_a_score_only_on_a_judge_scale_with_one(tmp_path):
    # An evaluation judge whose folder says `min_score: 0` reads a "0 9" review; the shipped 1-10 judges leave it unscored.
    from types import SimpleNamespace
    from lion_nb.judging import load_judge
    from lion_nb.evaluation import _job_verdict
    (tmp_path/'zero').mkdir()
    (tmp_path/'zero'/'p.txt').write_text('Q {question}\nA {answer_1}\nB {answer_2}\nTwo scores 0-10 first.\n')
    (tmp_path/'zero'/'config.yaml').write_text('parser: scores_first\nprompt: p.txt\nmin_score: 0\ntemperature: 0\n'
                                               'max_tokens: 99\n')
    reply = SimpleNamespace(status='done', text='0 9\nAssistant 1 wrote nothing at all.', finish_reason='stop', error=None)
    job = lambda jd: {'set': 'vicuna80', 'id': 'v1', 'candidate': 'iter_1', 'opponent': 'teacher', 'order': 'cand_first',
                      'judge': jd}
    v = _job_verdict(job(load_judge(str(tmp_path/'zero'))), 'score', [reply])
    assert (v['status'], v['cand_score'], v['opp_score'], v['outcome']) == ('done', 0.0, 9.0, 'lose')
    v = _job_verdict(job(load_judge('lion/review')), 'score', [reply])
    assert v['status'] == 'unscored' and 'outside 1-10' in v['error']


def test_empty_answers_are_judged_kept_and_counted(tmp_path, data_root):
    """A blank reply that ended normally is an answer: the judge scores it, it stays in the relative score and win
    rate, and the metrics, summary table, headline line and closing note count it."""
    def blank_reply(body: dict) -> str:
        text = last_user_text(body)
        if body['model'] == 'blank': return ' '
        if body['model'] != 'judge': return T_ANS
        if text.startswith('Here is a question and two answers'):
            return 'Answer 1 is empty.\nScores: 1 8' if re.search(r'\[Answer 1\]\n\s*\[End', text) else 'Answer 2 is empty.\nScores: 8 1'
        return 'A is empty. [[B]]' if re.search(r'\[Response A\]\n\s*\[End', text) else 'B is empty. [[A]]'
    with serve(blank_reply) as srv:
        d = make_cfg(srv, data_root, {'vicuna80': 4, 'user252': 5})
        d['models']['blank'] = dict(d['models']['bad'], model='blank')
        d['eval']['sets'] = ['vicuna80', 'user252']
        m = run_evaluation(parse_config(d), RunDir(tmp_path/'run'), 1, models={'blank': 'blank'}, plots=False)
    b = m['models']['blank']
    assert (b['vicuna80']['reviews_scored'], b['vicuna80']['failed'], b['vicuna80']['relative_score']) == (8, 0, 12.5)
    assert (b['user252']['win'], b['user252']['lose'], b['user252']['n'], b['user252']['win_rate']) == (0, 5, 5, 0.0)
    assert b['empty_answers'] == {'vicuna80': 4, 'user252': 5} and m['empty_answers'] == b['empty_answers']
    assert m['models']['teacher']['empty_answers'] == {'vicuna80': 0, 'user252': 0}
    assert summary_table(m).loc['blank', 'empty answers'] == 9
    note = closing_note(m).splitlines()
    assert note[-2:] == ['- empty answers (scored as answers): blank 9 (vicuna80 4, user252 5)',
                         '- answers: greedy (temperature 0; Lion samples at 0.7)']


def test_evaluation_answers_sample_at_eval_temperature_seeded(tmp_path, data_root):
    "eval.temperature 0.7 (the paper profile, as Lion's inference): every answer is sampled with a seed per item."
    seen = []
    def rec(body: dict) -> str:
        if body['model'] != 'judge': seen.append((body['model'], body.get('temperature'), body.get('seed')))
        return reply(body)
    with serve(rec) as srv:
        d = make_cfg(srv, data_root, {'vicuna80': 3})
        d['eval'].update(sets=['vicuna80'], temperature=0.7)
        m = run_evaluation(parse_config(d), RunDir(tmp_path/'run'), 1, models={'good': 'good'}, plots=False)
    assert len(seen) == 6 and {t for _, t, _ in seen} == {0.7} and all(s is not None for *_, s in seen)
    assert len({s for _, _, s in seen}) == 6 and m['answer_temperature'] == 0.7
    assert closing_note(m).endswith('- answers: sampled at temperature 0.7, seeded per model and item')


def test_a_logprob_judge_breaks_the_ties_its_text_hides(tmp_path):
    """A judge that always writes 'Assistant 1: 5 / Assistant 2: 5' but weighs 7 at the right answer's score token
    and 3 at the wrong one's: read as text (`default/review_short`) every probe pair ties, so the probe fails; read
    from logprobs (`default/review_short_logprob`, through the real openai client and a server that returns
    `logprobs.content`) the right answer wins in both orders, so it passes. Each verdict says how it was read."""
    from lion_nb.core import ModelSpec
    from lion_nb.judging import load_judge
    from lion_nb.evaluation import judge_probe
    from lion_nb.llm import make_client
    from lion_nb.probe import KnownPair
    asked = []
    def reply(body):
        asked.append(body)
        user = last_user_text(body)
        right_first = user.index('RIGHT') < user.index('WRONG')
        lean = {'5': 0.4, '7': 0.6}, {'5': 0.7, '3': 0.3}          # (right answer's token, wrong answer's token)
        alts = {1: lean[0], 3: lean[1]} if right_first else {1: lean[1], 3: lean[0]}   # digits: '1', score, '2', score
        return 'Assistant 1: 5\nAssistant 2: 5\nBoth are relevant.', 'stop', alts
    pairs = [KnownPair(f'p{i}', f'Explain topic {i}.', '', f'RIGHT answer {i}', f'WRONG answer {i}', 'other')
             for i in range(3)]
    out = {}
    with serve(reply) as srv:
        spec = ModelSpec(backend='openai', model='judge', base_url=srv.base_url, concurrency=4)
        for name in ('default/review_short', 'default/review_short_logprob'):
            d = tmp_path/name.replace('/', '_')
            client = make_client(spec, role='judge', cache_dir=d/'cache')
            out[name] = judge_probe(pairs, client, load_judge(name), seed=0, log_path=d/'verdicts.jsonl')
            verdicts = [json.loads(l) for l in (d/'verdicts.jsonl').read_text().splitlines()]
            assert len(verdicts) == 6 and all(v['status'] == 'done' for v in verdicts)
            if name.endswith('logprob'):
                assert {v['scorer'] for v in verdicts} == {'logprob'}
                assert all(abs(v['cand_score'] - 6.2) < 1e-9 and abs(v['opp_score'] - 4.4) < 1e-9 for v in verdicts)
            else: assert all('scorer' not in v and v['outcome'] == 'tie' for v in verdicts)
        assert srv.paths['POST /v1/chat/completions'] == 12                     # 2 judges x 3 pairs x 2 orders
    with_lp = [b for b in asked if b.get('logprobs')]
    assert len(with_lp) == 6 and all(b['top_logprobs'] == 5 for b in with_lp)      # only the logprob judge asks
    text, lp = out['default/review_short'], out['default/review_short_logprob']
    assert text['probe']['tie_share'] == 1.0 and text['passed'] is False
    assert lp['probe']['accuracy'] == 1.0 and lp['probe']['tie_share'] == 0.0 and lp['passed'] is True


def test_a_single_answer_judge_grades_each_answer_alone_and_the_reference_once(tmp_path, data_root):
    """With `judges: {review: default/review_single}` the judge sees one answer at a time (`{answer}`, no second
    answer) and grades it (teacher 8, good 6, bad 4; 'bad' unreadable on two questions). The relative scores are the
    grades' ratios exactly, the reference is graded once per item for both candidates (the dry run's count), the
    judge's probe reads the grades too, and position statistics, which need two orders, are None."""
    from lion_nb.judging import judge_for
    from lion_nb.evaluation import judge_requests
    graded, unreadable = [], set()
    def single(body: dict) -> str:
        if body['model'] != 'judge': return reply(body)
        text = last_user_text(body)
        assert '<answer>' in text and 'answer_2' not in text and text.count('-ANS') <= 1
        q = text.split('<request>\n', 1)[1].split('\n</request>', 1)[0]
        model = next((who(m) for m in ('T-ANS', 'G-ANS', 'B-ANS') if m in text), None)
        graded.append((q, model))
        if model is None: return 'Score: 1\nThere is no answer.'                   # the probe's empty answer
        if model == 'bad' and q in unreadable: return 'Hard to say.'
        return f"Score: {score_of(model, '', True) if model != 'good' else 6}\nReason: ..."
    with serve(single) as srv:
        d = make_cfg(srv, data_root, {'vicuna80': 8})
        d['eval']['sets'] = ['vicuna80']; d['judges'] = {'review': 'default/review_single'}
        cfg = parse_config(d)
        items = sample_items(load_eval_set('vicuna80', data_root), 8, cfg.seed, 'vicuna80')
        unreadable.update(user_message(x.instruction, x.input) for x in items[:2])
        m = run_evaluation(cfg, RunDir(tmp_path/'run'), 1, models={'good': 'good', 'bad': 'bad'}, plots=False)
    v = {lab: m['models'][lab]['vicuna80'] for lab in ('good', 'bad')}
    assert v['good']['relative_score'] == 75.0 and v['good']['reviews_scored'] == 8 and v['good']['unscored'] == 0
    assert v['bad']['relative_score'] == 50.0 and v['bad']['unscored'] == 2
    assert v['good']['position_consistency'] is None and v['good']['pairs_read'] == 0 and v['good']['graded_alone']
    assert 'each answer graded alone, so no position figures' in closing_note(m)
    assert len(graded) == 8 * 3 == judge_requests(judge_for(cfg, 'review'), 8, 2)   # the reference's grade: once
    assert len(set(graded)) == len(graded)
    verdicts = [json.loads(l) for l in (RunDir(tmp_path/'run').stage_dir(1, 'evaluation')/'verdicts.jsonl').read_text().splitlines()]
    assert {x['order'] for x in verdicts} == {'single'} and len(verdicts) == 16
    assert all(x['opp_text'].startswith('Score: 8') for x in verdicts)
    # the judge's probe on known-better pairs: the right answer (T-ANS) graded 8, an empty one 1, another's 4
    from lion_nb.core import ModelSpec
    from lion_nb.evaluation import judge_probe
    from lion_nb.llm import make_client
    from lion_nb.probe import probe_pairs
    pairs = probe_pairs([(f'q{i}', f'Question {i}?', '', 'T-ANS, said in five words') for i in range(2)], n=2, seed=0,
                        kinds=('empty',))
    with serve(single) as srv:
        client = make_client(ModelSpec(backend='openai', model='judge', base_url=srv.base_url), role='judge',
                             cache_dir=tmp_path/'probe')
        p = judge_probe(pairs, client, judge_for(cfg, 'review'), seed=0)
    assert p['passed'] and p['probe']['accuracy'] == 1.0 and p['probe']['mean_gap'] == 7.0
