"""Discrimination: the score parser on real-world referee shapes, swap-and-average, unscored accounting,
and the whole stage against a real local OpenAI-compatible server with scripted referee replies."""
import json, os, re, sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import serve  # noqa: E402

from lion_nb.core import Answer, Instruction, Review, RunDir, parse_config, read_log, read_json, write_jsonl  # noqa: E402
from lion_nb.discrimination import (swap_average, is_hard, position_consistency, position_means,  # noqa: E402
                                    score_items, Pair, latest_student, run_discrimination)
from lion_nb.judging import (ScoreParseError, parse_score_value, parse_scores, referee_messages,  # noqa: E402
                             REPAIR_PROMPT, SCORE_PARSERS, judge_for, load_judge, judge_sets, judges_root)
from lion_nb.data import load_review_sample  # noqa: E402

# ---------------------------------------------------------------- the parser

GOOD = [
    ('Assistant 1 is precise, Assistant 2 vague.\nAssistant 1: 8\nAssistant 2: 4', (8, 4)),
    ('Reasoning.\n\nAssistant 1: 7\nAssistant 2: 9\n\n\n  \n', (7, 9)),                   # trailing blank lines
    ('**Assistant 1:** 8/10\n**Assistant 2:** 6/10', (8, 6)),                              # markdown + /10
    ('Assistant 1: 8 / 10\nAssistant 2: 6 out of 10', (8, 6)),
    ('Both explain the loop. In 2019 there were 3 releases.\n7 9', (7, 9)),               # other numbers in reasoning
    ('Scores: 7, 8', (7, 8)),
    ('Final scores: 7 and 8.', (7, 8)),
    ('Explanation.\n8\n9', (8, 9)),
    ('Explanation.\nScore: 8.5\nScore: 6', (8.5, 6)),
    ('Explanation\n**8**\n**9**', (8, 9)),
    ('| Assistant | Score |\n|---|---|\n| Assistant 1 | 8 |\n| Assistant 2 | 9 |', (8, 9)),
    ('| | Assistant 1 | Assistant 2 |\n|---|---|---|\n| Score | 8 | 6 |', (8, 6)),
    ('| Criterion | Assistant 1 | Assistant 2 |\n|--|--|--|\n| Accuracy | 9 | 5 |\n| Overall | 8.5 | 5 |', (8.5, 5)),
    ('## Final scores\n- Assistant 1: **9**\n- Assistant 2: **5**', (9, 5)),
    ('Assistant 1 gets 3 points for style. Assistant 1 receives a score of 8 while Assistant 2 scored 6.', (8, 6)),
    ('Assistant 1 - 7\nAssistant 2 - 5', (7, 5)),
    ('assistant_1: 8\nassistant_2: 7', (8, 7)),
    ('Assistant #1: 10\nAssistant #2: 1', (10, 1)),
    ('Answer 1: 6 (correct but terse)\nAnswer 2: 9 (complete)', (6, 9)),
    ('{"reasoning": "Answer 1 lists 12 steps, answer 2 only 3", "assistant_1": 9, "assistant_2": 3}', (9, 3)),
    ('```json\n{"Assistant 1": "9/10", "Assistant 2": "7/10"}\n```', (9, 7)),
    ('{"scores": [7, 9]}', (7, 9)),
    ('Assistant 1 scored 10 out of 10, Assistant 2 scored 1 out of 10.', (10, 1)),
    ('Assistant 1: 7\nAssistant 2: 9\n', (7, 9)),
    ('<assistant_1_answer> 3 steps, <assistant_2_answer> 2 steps.\nAssistant 1: 8\nAssistant 2: 6', (8, 6)),  # quoted tags
    ('First, solve it: x = 10.\nAssistant 1 gets x = 8.\nSo we can give a score of 4 to Assistant 1 and a score of 9 to Assistant 2.', (4, 9)),
    ('Scores:\nAssistant 1: 10\nAssistant 2: 4\n\nAssistant 1 performed better.', (10, 4)),            # FastChat math review shape
    ('The tuple is (10, 1), since Assistant 2 is wrong.', (10, 1)),
]

BAD = [
    ('', 'empty'),
    ('   \n\n', 'empty'),
    ('8', 'only one score'),                                                  # a lone score is not a pair
    ('8/10', 'only one score'),
    ('Assistant 1 is more detailed and accurate than Assistant 2.', 'no scores'),
    ('Assistant 1: 8\nAssistant 2: 11', 'outside'),
    ('Assistant 1: 0\nAssistant 2: 5', 'outside'),
    ('Assistant 1: -1\nAssistant 2: -1', 'outside'),                          # the original code's failure marker
    ('Scores: 7, 8, 9', '3 numbers'),
    ('Scores: 4/5 and 3/5', 'scale'),
    ('Scores: 80/100, 60/100', 'scale'),
    ('Assistant 1: 7-8\nAssistant 2: 6', 'range'),
    ('Score: 7 or 8', 'no scores'),
    ('Overall I would give them 7 and 9.', 'no scores'),                     # prose: refuse to guess
    ('Assistant 1: 8\nAssistant 2 is better because it has 2 examples.', 'Assistant 1 only'),
    ('| | Assistant 1 | Assistant 2 |\n|-|-|-|\n| Accuracy | 9 | 5 |\n| Detail | 7 | 6 |', 'no overall row'),
    ('{"assistant_1": 8, "assistant_2": 12}', 'outside'),
    ('{"assistant_1": 8}', 'assistant 1 only'),
    ('Assistant 1: 8\nAssistant 2: ten', 'Assistant 1 only'),
    ('<assistant_1_answer>\n5\n</assistant_1_answer>', 'no scores'),
]


@pytest.mark.parametrize('text,want', GOOD)
def test_parser_accepts_real_world_shapes(text, want):
    assert parse_scores(text) == tuple(map(float, want))


@pytest.mark.parametrize('text,why', BAD)
def test_parser_rejects_unclear_output(text, why):
    with pytest.raises(ScoreParseError, match=re.escape(why)):
        parse_scores(text)


def test_parser_distrusts_replies_cut_at_max_tokens():
    # the last line may be half a score ("1" of "10"): ignored, and bare numbers are not trusted
    with pytest.raises(ScoreParseError, match='cut at max_tokens'):
        parse_scores('Long reasoning...\nAssistant 1: 8\nAssistant 2: 1', finish_reason='length')
    with pytest.raises(ScoreParseError, match='cut at max_tokens'):
        parse_scores('The first answer covers 3 cases and the second 4\n7', finish_reason='length')
    assert parse_scores('Assistant 1: 8\nAssistant 2: 7\nMore explanation that was cu', finish_reason='length') == (8.0, 7.0)
    assert parse_scores('Assistant 1: 8\nAssistant 2: 1', finish_reason='stop') == (8.0, 1.0)


MISREADS = [   # read wrongly by the earlier parser (shown), because a labelled number overrode the closing line
    ('**Answer 1:**\n1. Covers the steps.\n2. Correct.\n**Answer 2:**\n1. Misses a step.\nScores: 8 4', (8, 4)),     # was (1, 1)
    ('Answer 1 scored 3 points for accuracy and Answer 2 scored 2 points for the same. Scores: 8 6', (8, 6)),  # was (3, 2)
    ('Assistant 1: 8\nAssistant 2: 6\n\nNote: Assistant 2 is 2 points lower', (8, 6)),                       # was (8, 2)
]


@pytest.mark.parametrize('parser', SCORE_PARSERS)
@pytest.mark.parametrize('text,want', MISREADS)
def test_closing_line_wins_over_labelled_numbers(text, want, parser):
    assert parse_scores(text, parser=parser) == tuple(map(float, want))


@pytest.mark.parametrize('parser', SCORE_PARSERS)
def test_conflicting_scores_are_unparsed_not_guessed(parser):
    for text in ['Assistant 1 gets 7 and Assistant 2 gets 5.\nThinking again, Assistant 1 gets 8 and Assistant 2 gets 5.',
                 'Reasoning.\nAssistant 1: 7\nAssistant 2: 5\nOn reflection:\nAssistant 1: 8\nAssistant 2: 5\nThat is all.',
                 '{"assistant_1": 7, "assistant_2": 5}\nwait\nAssistant 1: 9\nAssistant 2: 2\nDone.'][:2 if parser == 'json' else 3]:
        with pytest.raises(ScoreParseError, match='conflicting'):
            parse_scores(text, parser=parser)
    if parser == 'json':      # for the structured path the JSON object is the statement the prompt asked for
        assert parse_scores('{"assistant_1": 7, "assistant_2": 5}\nAssistant 1: 9\nAssistant 2: 2', parser='json') == (7.0, 5.0)


def test_scores_first_reads_the_opening_line():
    # FastChat's review prompt: two scores on the first line, then the explanation (with numbers of its own)
    text = '7 9\nAssistant 1 lists 3 tips; Assistant 2 lists 10 and explains each.\nAssistant 1: 3 tips.'
    assert parse_scores(text, parser='scores_first') == (7.0, 9.0)
    assert parse_scores(text, parser='scores_last') == (7.0, 9.0)      # the only clear statement of both scores
    assert parse_scores('Score of the Assistant 1: 6\nScore of the Assistant 2: 8\nBecause ...', parser='scores_first') == (6.0, 8.0)


@pytest.mark.parametrize('parser', SCORE_PARSERS)
def test_every_parser_reads_real_gpt4_reviews(parser):
    # 160 real GPT-4 Vicuna-80 reviews (FastChat's general, coding and math prompts) and the scores FastChat recorded
    reviews = load_review_sample()
    assert len(reviews) >= 100 and {r['prompt'] for r in reviews} == {'general', 'coding', 'math'}
    right, wrong = 0, []
    for r in reviews:
        try: got = parse_scores(r['text'], parser=parser)
        except ScoreParseError: continue
        if got == r['score']: right += 1
        else: wrong.append((r['file'], r['line'], got, r['score']))
    assert right >= 0.99 * len(reviews), f"{right}/{len(reviews)} read right"
    assert not wrong, wrong                                           # unread is allowed (1%), misread is not


def test_a_zero_is_read_only_where_the_judges_scale_has_one(tmp_path):
    # The 160 real GPT-4 reviews: one gives "0 9" to an empty answer, on FastChat's 1-10 prompt. A 1-10 judge leaves it
    # unread (never guessed); a judge folder that says `min_score: 0` reads it, and every review then agrees with the
    # score FastChat recorded.
    from lion_nb.judging import load_judge
    reviews = load_review_sample()
    (tmp_path/'zero').mkdir()
    (tmp_path/'zero'/'p.txt').write_text('Q {question}\nA {answer_1}\nB {answer_2}\nScores 0-10 first.\n')
    (tmp_path/'zero'/'config.yaml').write_text('parser: scores_first\nprompt: p.txt\nmin_score: 0\n'
                                               'temperature: 0.2\nmax_tokens: 99\n')
    judge = load_judge(str(tmp_path/'zero'))
    assert judge.config.min_score == 0 and load_judge('lion/review').config.min_score == 1
    got = [parse_scores(r['text'], parser='scores_first', min_score=judge.config.min_score) for r in reviews]
    assert got == [r['score'] for r in reviews] and (0.0, 9.0) in got
    with pytest.raises(ScoreParseError, match='outside 1-10'):
        parse_scores(next(r['text'] for r in reviews if r['score'] == (0.0, 9.0)), parser='scores_first')
    (tmp_path/'zero'/'config.yaml').write_text('parser: scores_first\nprompt: p.txt\nmin_score: 5\n'
                                               'temperature: 0.2\nmax_tokens: 99\n')
    with pytest.raises(Exception, match='min_score'): load_judge(str(tmp_path/'zero'))


def test_score_spans_point_at_the_scores_of_real_reviews():
    # Where the text parser found each score of the 160 real reviews: the characters there spell that very score
    # (the logprob scorer reads the tokens at those characters).
    from lion_nb.judging import score_spans
    n = 0
    for r in load_review_sample():
        try: scores, spans = score_spans(r['text'], parser='scores_first')
        except ScoreParseError: continue
        assert None not in spans, r['text'][:200]
        assert [float(r['text'][a:b]) for a, b in spans] == list(scores)
        n += 1
    assert n >= 159


def test_judges_are_data(tmp_path):
    cfg = parse_config({'models': {'m': {'backend': 'openai', 'model': 'x'}}, 'roles': {r: 'm' for r in
                        ('teacher', 'referee', 'generator', 'judge', 'student')},
                        'judge_set': 'lion', 'judges': {'pairwise': 'default/pairwise', 'referee': str(tmp_path/'mine')}})
    assert judge_for(cfg, 'review').name == 'lion/review' and judge_for(cfg, 'pairwise').name == 'default/pairwise'
    with pytest.raises(Exception, match='no judge'): judge_for(cfg, 'referee')          # the folder does not exist yet
    (tmp_path/'mine').mkdir()
    (tmp_path/'mine'/'config.yaml').write_text('parser: scores_first\nprompt: p.txt\ntemperature: 0.5\nmax_tokens: 99\n')
    (tmp_path/'mine'/'p.txt').write_text('Q {question}\nA {answer_1}\nB {answer_2}\nScores first.\n')
    j = judge_for(cfg, 'referee')
    assert (j.parser, j.config.temperature, j.config.max_tokens) == ('scores_first', 0.5, 99)
    assert referee_messages('q', '', 'a', 'b', judge=j) == [{'role': 'user', 'content': 'Q q\nA a\nB b\nScores first.'}]
    with pytest.raises(Exception, match='judge_set|judges'):
        parse_config({'models': {'m': {'backend': 'openai', 'model': 'x'}}, 'roles': {r: 'm' for r in
                      ('teacher', 'referee', 'generator', 'judge', 'student')}, 'judges': {'refere': 'lion/referee'}})
    assert load_judge('lion/referee').system.startswith('You are a helpful and precise assistant')


def test_judge_files_ship_with_the_package(tmp_path):
    import subprocess, zipfile
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, 'setup.py', '-q', 'bdist_wheel', '-d', str(tmp_path)], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (whl,) = tmp_path.glob('*.whl')
    names = set(zipfile.ZipFile(whl).namelist())
    import os, yaml
    for s, judges in judge_sets().items():
        for j in judges:   # the config and the prompt file it names (a judge may share its sibling's prompts: ../x)
            prompt = yaml.safe_load((judges_root()/s/j/'config.yaml').read_text())['prompt']
            assert f'lion_nb/judges/{s}/{j}/config.yaml' in names and os.path.normpath(f'lion_nb/judges/{s}/{j}/{prompt}') in names
    assert 'lion_nb/judges/lion/README.md' in names


def test_single_score_values():
    for s, v in [('8', 8), ('8/10', 8), ('Score: 8.5', 8.5), ('**8**', 8), (' 10 ', 10)]:
        assert parse_score_value(s) == v
    for s in ['0', '10.5', '7-8', 'eight', '3/5']:
        with pytest.raises(ScoreParseError): parse_score_value(s)


# ---------------------------------------------------------------- arithmetic

def test_swap_and_average():
    assert swap_average([8, 6], [6, 8]) == (8.0, 6.0, 2.0)        # consistent referee
    assert swap_average([9, 6], [8, 7]) == (8.0, 7.0, 1.0)        # +1 for the first position cancels out
    assert swap_average([7, 5], [7, 5]) == (6.0, 6.0, 0.0)        # pure position preference: no gap
    t, s, d = swap_average([8.3, 7.3], [7.3, 8.3])
    assert d == 1.0 and is_hard(d, 1.0)                            # no float noise at the threshold
    assert not is_hard(0.999, 1.0) and is_hard(1.0, 1.0)


def test_unscored_items_are_excluded_and_counted():
    pairs = [Pair(x, f'q {x}', '', f'T{x}', f'S{x}') for x in 'abcd']
    R = lambda i, o, sc=None, err=None: Review(id=i, order=o, scores=sc, status='done' if sc else 'unscored', error=err)
    reviews = {('a', 'teacher_first'): R('a', 'teacher_first', [9, 5]), ('a', 'student_first'): R('a', 'student_first', [5, 9]),
               ('b', 'teacher_first'): R('b', 'teacher_first', err='unparseable after 3 attempt(s): no scores'),
               ('b', 'student_first'): R('b', 'student_first', [2, 2]),
               ('c', 'teacher_first'): R('c', 'teacher_first', [6, 6])}              # c: one review missing
    scored, unscored = score_items(pairs, reviews, tau=1.0)
    assert [x['id'] for x in scored] == ['a'] and scored[0]['d'] == 4.0 and scored[0]['hard']
    assert [x['id'] for x in unscored] == ['b', 'c', 'd']
    assert 'teacher_first review unscored: unparseable' in unscored[0]['reason']
    assert unscored[1]['reason'] == 'student_first review missing'
    assert all(x.get('d') is None for x in unscored)                                  # never a d, never "easy"


def test_position_statistics():
    it = lambda tf, sf: {'scores': {'teacher_first': {'teacher': tf[0], 'student': tf[1]},
                                    'student_first': {'student': sf[0], 'teacher': sf[1]}}}
    pc = position_consistency([it([8, 6], [6, 8]), it([8, 6], [8, 6]), it([5, 5], [5, 5]), it([7, 7], [6, 8])])
    assert (pc['items'], pc['consistent'], pc['consistent_ties'], pc['inconsistent']) == (4, 2, 1, 2)
    pm = position_means([Review(id='a', order='teacher_first', scores=[9, 5]), Review(id='a', order='student_first', scores=[7, 7])])
    assert (pm['first_mean'], pm['second_mean'], pm['first_wins'], pm['second_wins'], pm['ties']) == (8.0, 6.0, 1, 0, 1)


def test_latest_student_prefers_newest_trained_checkpoint(tmp_path):
    cfg = parse_config(_cfg_dict('http://127.0.0.1:9/v1'))
    run = RunDir(tmp_path)
    assert latest_student(cfg, run, 2)[0].model == 'S'
    ckpt = run.stage_dir(1, 'imitation')/'model'; ckpt.mkdir(parents=True); (ckpt/'config.json').write_text('{}')
    spec, which = latest_student(cfg, run, 2)
    assert spec.backend == 'hf' and Path(spec.model) == ckpt.resolve() and which == 'iter_1/imitation/model'


# ---------------------------------------------------------------- the whole stage against a scripted server

# id: (teacher score, student score, how the referee behaves)
SCRIPT = {
    'q0': (9, 5, 'plain'),       # hard, d = 4
    'q1': (6, 6, 'plain'),       # easy, tie in both orders
    'q2': (7, 6, 'bias'),        # +1 for whoever is first: [8,6] and [7,7] -> d = 1.0 exactly: hard
    'q3': (8, 7.5, 'slash'),     # "**Assistant 1:** 8/10": easy, d = 0.5
    'q4': (7, 3, 'repair'),      # first reply has no scores; the repair request gets them: hard
    'q5': (6, 4, 'never_sf'),    # student-first review never parseable: unscored
    'q6': (6, 4, 'oob'),         # always out of range (12): unscored
    'q7': (8, 2, 'plain'),       # the student's answer fails (cut at max_tokens before any text): unscored
    'q8': (9, 10, 'truncated'),  # first reply cut at max_tokens; repaired: easy, d = -1
    'q9': (5, 8, 'table'),       # markdown table: easy, d = -3
}
CATS = {'q0': 'math', 'q1': 'writing', 'q2': 'coding', 'q3': 'writing', 'q4': 'math', 'q5': 'generic',
        'q6': 'generic', 'q7': 'coding', 'q8': 'writing', 'q9': 'generic'}
HARD, EASY, UNSCORED = {'q0', 'q2', 'q4'}, {'q1', 'q3', 'q8', 'q9'}, {'q5', 'q6', 'q7'}


def _id_of(text):
    return re.search(r'\[(q\d+)\]', text).group(1)


def scripted_reply(calls: Counter):
    def reply(body):
        model, msgs = body['model'], body['messages']
        users = [m['content'] for m in msgs if m['role'] == 'user']
        qid = _id_of(users[0])
        calls[(model, qid)] += 1
        if model == 'T': return f'TEACHER answer for [{qid}]: a careful, complete answer.'
        if model == 'S': return ('', 'length') if qid == 'q7' else f'STUDENT answer for [{qid}]: short.'
        assert model == 'R'
        t, s, how = SCRIPT[qid]
        first_is_teacher = re.search(r'<assistant_1_answer>\nTEACHER', users[0]) is not None
        a, b = (t, s) if first_is_teacher else (s, t)
        if how == 'bias': a, b = a + 1, b
        repair = len(users) > 1
        if repair: assert users[-1].startswith('I could not read your scores')
        if 'response_format' in body:
            return json.dumps({'reasoning': 'Compared; answer 1 has 3 steps.', 'assistant_1': a, 'assistant_2': b})
        lines = f'Assistant 1: {a:g}\nAssistant 2: {b:g}'
        if how == 'slash': return f'Both are relevant; one has 2 more details.\n\n**Assistant 1:** {a:g}/10\n**Assistant 2:** {b:g}/10\n'
        if how == 'table': return f'Comparison done.\n\n| | Assistant 1 | Assistant 2 |\n|---|---|---|\n| Score | {a:g} | {b:g} |'
        if how == 'repair' and not repair: return 'Both answers are reasonable; it is hard to say which is better.'
        if how == 'never_sf' and not first_is_teacher: return 'I would rather not give numbers here.'
        if how == 'oob': return 'Assistant 1: 12\nAssistant 2: 3'
        if how == 'truncated' and not repair: return (f'The first answer covers 4 points in depth, the second', 'length')
        return f'The first answer is compared with the second on 4 criteria.\n{lines}'
    return reply


def _cfg_dict(base_url, structured=False, probe=False):
    m = lambda name, **kw: {'backend': 'openai', 'model': name, 'base_url': base_url, 'max_retries': 0, 'timeout_s': 10, **kw}
    return {'name': 'disc-test', 'seed': 7, 'probe': {'enabled': probe},
            'models': {'T': m('T'), 'S': m('S'), 'R': m('R', structured_output=structured)},
            'roles': {'teacher': 'T', 'student': 'S', 'referee': 'R', 'generator': 'R', 'judge': 'R'},
            'loop': {'tau': 1.0}, 'sampling': {'repair_retries': 2, 'referee_max_tokens': 256, 'max_new_tokens': 64}}


def _pool(ids):
    return [Instruction(id=q, instruction=f'Task [{q}]: explain topic {q}.', input='some input' if q == 'q3' else '',
                        category=CATS.get(q, 'generic')) for q in ids]


def _ids(path):
    return {o['id'] for o in read_log(path)}


def test_whole_stage_against_scripted_server(tmp_path):
    calls = Counter()
    with serve(scripted_reply(calls)) as srv:
        cfg = parse_config(_cfg_dict(srv.base_url))
        run = RunDir(tmp_path/'run')
        write_jsonl(run.pool(1, 'cache'), _pool(SCRIPT))
        s = run_discrimination(cfg, run, 1, progress=None)
        out = run.stage_dir(1, 'discrimination')

        # the split is exactly the scripted one; unscored items are counted, with their reasons
        assert _ids(out/'hard.jsonl') == HARD and _ids(out/'easy.jsonl') == EASY and _ids(out/'unscored.jsonl') == UNSCORED
        assert (s['pool'], s['scored'], s['hard'], s['easy'], s['unscored']) == (10, 7, 3, 4, 3)
        reasons = {o['id']: o['reason'] for o in read_log(out/'unscored.jsonl')}
        assert reasons['q7'].startswith('student answer failed')
        assert 'student_first review unscored: unparseable after 3 attempt(s)' in reasons['q5'] and 'teacher_first' not in reasons['q5']
        assert 'outside 1-10' in reasons['q6'] and 'teacher_first' in reasons['q6'] and 'student_first' in reasons['q6']
        assert s['unscored_reasons'] == {'answer failed': 1, 'unparseable': 2}

        # the records the generation stage reads, with both answers, the four scores, both reviews and d
        hard = {o['id']: o for o in read_log(out/'hard.jsonl')}
        q2 = hard['q2']
        assert q2['scores'] == {'teacher_first': {'teacher': 8.0, 'student': 6.0}, 'student_first': {'student': 7.0, 'teacher': 7.0}}
        assert (q2['teacher_score'], q2['student_score'], q2['d'], q2['category']) == (7.5, 6.5, 1.0, 'coding')
        assert q2['teacher_answer'].startswith('TEACHER') and q2['student_answer'].startswith('STUDENT')
        assert 'Assistant 1: 8' in q2['review_teacher_first'] and 'Assistant 1: 7' in q2['review_student_first']
        assert '[scores given on repair request 1]' in hard['q4']['review_teacher_first']
        easy = {o['id']: o for o in read_log(out/'easy.jsonl')}
        assert easy['q3']['input'] == 'some input' and easy['q3']['d'] == 0.5 and easy['q9']['d'] == -3.0 and easy['q8']['d'] == -1.0

        # referee accounting: 9 pairs x 2 orders + repairs (q4: 2, q5: 2, q6: 4, q8: 2)
        r = s['referee']
        assert r['referee_calls'] == 28 and r['repair_requests'] == 10
        assert r['parse_failures'] == 2 + 3 + 6 + 2
        assert (r['reviews_needing_repair'], r['repair_successes']) == (7, 4)
        assert (r['reviews_scored'], r['reviews_unscored']) == (15, 3)
        assert sum(n for (m, _), n in calls.items() if m == 'R') == 28

        # position bias: q2 is the only item whose orders disagree
        pc = s['position_consistency']
        assert (pc['items'], pc['consistent'], pc['consistent_ties']) == (7, 6, 1)
        done = [[9, 5], [5, 9], [6, 6], [6, 6], [8, 6], [7, 7], [8, 7.5], [7.5, 8], [7, 3], [3, 7], [6, 4], [9, 10], [10, 9], [5, 8], [8, 5]]
        assert s['position_means']['reviews'] == 15
        assert s['position_means']['first_mean'] == pytest.approx(sum(x[0] for x in done) / 15)
        assert s['position_means']['second_mean'] == pytest.approx(sum(x[1] for x in done) / 15)

        # files, plots, done marker, categories
        for f in ('summary.json', 'reviews.jsonl', 'referee_calls.jsonl', 'gaps.png', 'scores.png', 'categories.png'):
            assert (out/f).stat().st_size > 0, f
        assert read_json(run.done_file(1, 'discrimination'))['hard'] == 3
        assert s['categories']['hard'] == {'math': 2, 'coding': 1} and s['categories']['pool']['writing'] == 3
        assert len(read_log(out/'reviews.jsonl', Review)) == 18

        # done already: nothing is asked again
        n = srv.n_chat
        assert run_discrimination(cfg, run, 1, progress=None)['hard'] == 3 and srv.n_chat == n

        # iteration 2: the Cache Pool grew by two; old teacher answers, student answers (same base student)
        # and reviews come from the cache, only the new instructions cost requests
        write_jsonl(run.pool(2, 'cache'), _pool(list(SCRIPT) + ['q10', 'q11']))
        SCRIPT.update(q10=(9, 2, 'plain'), q11=(4, 4, 'plain'))
        try:
            before = Counter(calls)
            s2 = run_discrimination(cfg, run, 2, progress=None)
        finally:
            del SCRIPT['q10'], SCRIPT['q11']
        new = calls - before
        assert {q for (m, q) in new if m == 'T'} == {'q10', 'q11'}
        assert all(calls[('T', q)] == 1 for q in SCRIPT if q != 'q7')
        assert new[('T', 'q10')] == 1 and new[('R', 'q10')] == 2
        assert _ids(run.stage_dir(2, 'discrimination')/'hard.jsonl') == HARD | {'q10'} and s2['unscored'] == 3


def test_an_empty_student_answer_is_reviewed_and_can_be_hard(tmp_path):
    "An empty reply that ended normally is the student's answer: the referee sees it, scores it, and it is hard."
    prompts = {}
    def reply(body):
        users = [m['content'] for m in body['messages'] if m['role'] == 'user']
        qid = _id_of(users[0])
        if body['model'] == 'T': return f'TEACHER answer for [{qid}].'
        if body['model'] == 'S': return '  ' if qid == 'q0' else f'STUDENT answer for [{qid}].'
        prompts.setdefault(qid, []).append(users[0])
        empty_first = '<assistant_1_answer>\n\n</assistant_1_answer>' in users[0]
        a, b = (9, 9) if qid == 'q1' else (1, 9) if empty_first else (9, 1)
        return f'One answer is missing.\nAssistant 1: {a}\nAssistant 2: {b}'
    with serve(reply) as srv:
        cfg = parse_config(_cfg_dict(srv.base_url))
        run = RunDir(tmp_path/'run')
        write_jsonl(run.pool(1, 'cache'), _pool(['q0', 'q1']))
        s = run_discrimination(cfg, run, 1, progress=None)
    out = run.stage_dir(1, 'discrimination')
    assert (s['scored'], s['hard'], s['unscored']) == (2, 1, 0)
    hard = {o['id']: o for o in read_log(out/'hard.jsonl')}
    assert set(hard) == {'q0'} and hard['q0']['student_answer'] == '  ' and hard['q0']['d'] == 8.0
    assert sum('<assistant_1_answer>\n\n</assistant_1_answer>' in p for p in prompts['q0']) == 1   # shown empty


def test_teacher_answers_under_the_configured_system_prompt_and_the_student_under_none(tmp_path):
    "sampling.teacher_system (the paper profile: Lion's) goes before every teacher request, never the student's."
    from lion_nb.llm import LION_TEACHER_SYSTEM
    systems = Counter()
    def reply(body):
        sys_ = tuple(m['content'] for m in body['messages'] if m['role'] == 'system')
        if body['model'] in ('T', 'S'): systems[(body['model'], sys_)] += 1
        qid = _id_of([m['content'] for m in body['messages'] if m['role'] == 'user'][0])
        return f'Answer for [{qid}].' if body['model'] != 'R' else 'Same.\nAssistant 1: 5\nAssistant 2: 5'
    with serve(reply) as srv:
        d = _cfg_dict(srv.base_url)
        d['sampling']['teacher_system'] = LION_TEACHER_SYSTEM
        run = RunDir(tmp_path/'run')
        write_jsonl(run.pool(1, 'cache'), _pool(['q0', 'q1']))
        run_discrimination(parse_config(d), run, 1, progress=None)
    assert systems == {('T', (LION_TEACHER_SYSTEM,)): 2, ('S', ()): 2}


def test_the_stage_probes_the_referee_before_the_student_answers(tmp_path):
    "With the probe on (the default), iteration 1 reviews known-better pairs first; the split is unchanged."
    calls, order = Counter(), []
    reply = scripted_reply(calls)
    def logged(body):
        order.append(body['model'])
        return reply(body)
    with serve(logged) as srv:
        cfg = parse_config(_cfg_dict(srv.base_url, probe=True))
        run = RunDir(tmp_path/'run')
        write_jsonl(run.pool(1, 'cache'), _pool(SCRIPT))
        s = run_discrimination(cfg, run, 1, progress=None)
    out = run.stage_dir(1, 'discrimination')
    probe = read_json(out/'probe.json')
    assert probe == s['probe'] and probe['probe']['pairs'] == 18                  # 6 items x 3 kinds
    assert set(probe['probe']['per_kind']) == {'other', 'truncated', 'empty'}
    first_student = order.index('S')
    assert order[first_student - 1] == 'R' and 'R' not in order[:order.index('T')]  # T, then the probe (R), then S
    assert _ids(out/'hard.jsonl') == HARD and s['referee']['referee_calls'] == 28     # the probe is counted apart


def test_reviews_resume_after_a_crash(tmp_path):
    "A stage interrupted after its reviews were logged picks them up without asking the referee again."
    calls = Counter()
    with serve(scripted_reply(calls)) as srv:
        cfg = parse_config(_cfg_dict(srv.base_url))
        run = RunDir(tmp_path/'run')
        ids = ['q0', 'q4', 'q9']
        write_jsonl(run.pool(1, 'cache'), _pool(ids))
        s = run_discrimination(cfg, run, 1, progress=None)
        out = run.stage_dir(1, 'discrimination')
        for f in ('DONE.json', 'hard.jsonl', 'easy.jsonl', 'summary.json'): (out/f).unlink()
        (tmp_path/'run'/'cache').rename(tmp_path/'run'/'cache.gone')   # no LLM cache either: only the logs can help
        n = srv.n_chat
        s2 = run_discrimination(cfg, run, 1, progress=None)
        assert srv.n_chat == n and (s2['hard'], s2['easy']) == (s['hard'], s['easy']) == (2, 1)

        # a changed answer is reviewed afresh (the logged review's fingerprint no longer matches)
        from lion_nb.core import JsonlLog
        with JsonlLog(out/'answers_student.jsonl') as log:
            log.append(Answer(id='q0', instruction='Task [q0]: explain topic q0.', role='student', model='S', output='STUDENT answer for [q0]: revised.'))
        for f in ('DONE.json', 'hard.jsonl', 'easy.jsonl', 'summary.json'): (out/f).unlink()
        before = Counter(calls)
        s3 = run_discrimination(cfg, run, 1, progress=None)
        assert calls - before == Counter({('R', 'q0'): 2}) and s3['referee']['referee_calls'] == 8   # q4: 2 + repairs 2; q9: 2; q0: 2
        assert 'revised' in {o['id']: o for o in read_log(out/'hard.jsonl')}['q0']['student_answer']


def test_structured_output_referee(tmp_path):
    "On a structured-output endpoint the referee request carries the JSON schema and the JSON reply is used."
    calls, bodies = Counter(), []
    base = scripted_reply(calls)
    def reply(body):
        if body['model'] == 'R': bodies.append(body)
        return base(body)
    with serve(reply) as srv:
        cfg = parse_config(_cfg_dict(srv.base_url, structured=True))
        run = RunDir(tmp_path/'run')
        write_jsonl(run.pool(1, 'cache'), _pool(['q0', 'q1']))
        s = run_discrimination(cfg, run, 1, progress=None)
    assert len(bodies) == 4 and all(b['response_format']['json_schema']['name'] == 'referee_scores' for b in bodies)
    assert '"assistant_1"' in bodies[0]['messages'][1]['content']
    assert (s['hard'], s['easy'], s['referee']['parse_failures']) == (1, 1, 0)


def test_referee_and_discriminate_commands(tmp_path, capsys):
    from lion_nb.cli import main
    calls = Counter()
    with serve(scripted_reply(calls)) as srv:
        cfg_path = tmp_path/'config.yaml'; cfg_path.write_text(yaml.safe_dump(_cfg_dict(srv.base_url)))
        pool = _pool(['q0', 'q1', 'q6'])
        T = [Answer(id=i.id, instruction=i.instruction, role='teacher', model='T', output=f'TEACHER answer for [{i.id}]') for i in pool]
        S = [Answer(id=i.id, instruction=i.instruction, role='student', model='S', output=f'STUDENT answer for [{i.id}]') for i in pool]
        write_jsonl(tmp_path/'t.jsonl', T); write_jsonl(tmp_path/'s.jsonl', S)
        rc = main(['referee', '--config', str(cfg_path), '--teacher', str(tmp_path/'t.jsonl'), '--student', str(tmp_path/'s.jsonl'),
                   '--out', str(tmp_path/'ref'), '--no-plots'])
        assert rc == 0 and _ids(tmp_path/'ref'/'hard.jsonl') == {'q0'} and _ids(tmp_path/'ref'/'unscored.jsonl') == {'q6'}
        assert '1 hard, 1 easy' in capsys.readouterr().out
        run = tmp_path/'run'; write_jsonl(RunDir(run).pool(1, 'cache'), pool)
        rc = main(['discriminate', '--config', str(cfg_path), '--run-dir', str(run), '--iteration', '1'])
        assert rc == 0 and 'position consistency: 2/2' in capsys.readouterr().out
        assert main(['referee', '--config', str(cfg_path), '--teacher', str(tmp_path/'missing.jsonl'),
                     '--student', str(tmp_path/'s.jsonl'), '--out', str(tmp_path/'x')]) == 2


def test_logprob_scorer_finds_the_lean_that_text_scores_hide(tmp_path):
    """A referee that always writes 'Assistant 1: 5 / Assistant 2: 5' but weighs 7 at the right answer's score token
    (60%) and 3 at the wrong one's (30%): the text scorer sees ties only, the logprob scorer (the shipped
    `default/referee_logprob` judge, through the real openai client and a server that returns `logprobs.content`)
    puts the right answer ahead in both orders, so every pair is hard at tau 1. The probe reads it the same way."""
    from lion_nb.discrimination import Pair, RefereeSettings, review_pairs
    from lion_nb.core import ModelSpec
    from lion_nb.llm import make_client
    def reply(body):
        user = body['messages'][-1]['content']
        right_first = user.index('RIGHT') < user.index('WRONG')
        lean = {'5': 0.4, '7': 0.6}, {'5': 0.7, '3': 0.3}          # (right answer's token, wrong answer's token)
        alts = {1: lean[0], 3: lean[1]} if right_first else {1: lean[1], 3: lean[0]}   # digits: '1', score, '2', score
        return 'Both are relevant.\nAssistant 1: 5\nAssistant 2: 5', 'stop', alts
    pairs = [Pair(f'q{i}', f'Explain topic {i}.', '', f'RIGHT answer {i}', f'WRONG answer {i}') for i in range(4)]
    out = {}
    with serve(reply) as srv:
        spec = ModelSpec(backend='openai', model='referee', base_url=srv.base_url, concurrency=4)
        for judge in ('default/referee', 'default/referee_logprob'):
            st = RefereeSettings(judge=load_judge(judge), temperature=0.0, max_tokens=512, seed=0, repair_retries=2,
                                 structured=False, model='referee')
            d = tmp_path/judge.replace('/', '_')
            reviews = review_pairs(pairs, make_client(spec, role='referee', cache_dir=d/'cache'), st, d/'reviews.jsonl')
            out[judge] = score_items(pairs, reviews, tau=1.0)[0]
            again = review_pairs(pairs, make_client(spec, role='referee', cache_dir=d/'cache2'), st, d/'reviews.jsonl')
            assert again == reviews                                              # resumed from the log as read
        assert srv.paths['POST /v1/chat/completions'] == 16                     # 2 judges x 4 pairs x 2 orders
    text, lp = out['default/referee'], out['default/referee_logprob']
    assert all(r['d'] == 0 for r in text)
    assert all(abs(r['teacher_score'] - 6.2) < 1e-9 and abs(r['student_score'] - 4.4) < 1e-9 and r['d'] > 1 for r in lp)
    calls = read_log(tmp_path/'default_referee_logprob'/'referee_calls.jsonl')
    assert {c['scorer'] for c in calls} == {'logprob'}
