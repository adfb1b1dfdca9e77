"""The exact ROUGE-L filter must decide exactly as rouge-score does: property tests and the CLI."""
import json, math, random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from lion_nb.cli import main as lion_main
from lion_nb.core import InputError, LionError, write_jsonl
from lion_nb.dedup import (Decision, RougeIndex, candidate_masks, dedup_cli, lcs_length, lcs_many, reference_filter,
                           reference_rouge_l, rouge_filter, rouge_l_fmeasure, rouge_tokenize)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies: plain words that collide often, and adversarial pieces ------------------------------------
WORDS = ['a', 'b', 'c', 'the', 'of', 'write', 'poem', 'sea', 'x1', '42']
ODD = ['...', '!?', ' - ', '\n', '\t', "don't", 'É', 'é', 'ß', 'İ', '\u212a', 'ﬁ', '中文', '🙂', 'a\u0301', 'Ⅻ',
       '٣', 'A.B.C', 'x_y', '  ', '', 'THE', 'Sea,', '(b)', '"c"']

def join(parts): return ''.join(parts)

plain_text = st.lists(st.sampled_from(WORDS), max_size=14).map(' '.join)
adversarial_text = st.lists(st.one_of(st.sampled_from(WORDS).map(lambda w: w + ' '), st.sampled_from(ODD)),
                            max_size=16).map(join)
repeated_text = st.tuples(st.sampled_from(WORDS), st.integers(0, 20), plain_text).map(lambda t: (t[0] + ' ') * t[1] + t[2])
any_text = st.one_of(plain_text, adversarial_text, repeated_text, st.text(max_size=40))
thresholds = st.one_of(st.sampled_from([0.7, 0.5, 1.0, 0.3, 2 / 3]), st.floats(0.01, 1.0))
index_shapes = st.sampled_from([dict(), dict(dense_min_items=1, dense_share=0.0), dict(dense_min_items=3, dense_share=0.3),
                                dict(cell_budget=8)])


def _reference_max(pool, text):
    scores = [reference_rouge_l(p, text) for p in pool]
    best = max(scores, default=0.0)
    return best, (scores.index(best) if best > 0 else -1)


def _lcs_dp(a, b):
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


# -- the pieces ---------------------------------------------------------------------------------------------
@SETTINGS
@given(any_text, any_text)
def test_fmeasure_matches_reference_bit_for_bit(a, b):
    ta, tb = rouge_tokenize(a), rouge_tokenize(b)
    assert rouge_l_fmeasure(_lcs_dp(ta, tb), len(ta), len(tb)) == reference_rouge_l(a, b)


@SETTINGS
@given(st.lists(st.integers(0, 3), max_size=200), st.lists(st.integers(0, 3), max_size=200))
def test_lcs_length_and_vectorised_lcs(a, b):
    ref = _lcs_dp(a, b)
    assert lcs_length(a, b) == ref
    toks = np.array(b, dtype=np.int64).reshape(1, len(b))
    assert lcs_many(candidate_masks(a, 4), len(a), toks, np.array([len(b)])).tolist() == [ref]


def test_vectorised_lcs_across_word_boundaries():
    rng = random.Random(1)
    for n in (63, 64, 65, 127, 128, 129, 300):
        cand = [rng.randrange(3) for _ in range(n)]
        docs = sorted(([rng.randrange(4) for _ in range(rng.randint(0, 400))] for _ in range(12)), key=len)
        lens = np.array([len(d) for d in docs]); toks = np.full((len(docs), max(lens)), 4)
        for i, d in enumerate(docs): toks[i, :len(d)] = d
        assert lcs_many(candidate_masks(cand, 4), n, toks, lens).tolist() == [_lcs_dp(cand, d) for d in docs]


# -- the filter against the reference -----------------------------------------------------------------------
@SETTINGS
@given(st.lists(any_text, max_size=12), st.lists(any_text, min_size=1, max_size=6), thresholds, index_shapes)
@example(pool=['a b c d e f g h i j'], cands=['a b c d e f g x y z'], threshold=0.7, shape={})   # 7 of 10 shared: at the threshold
@example(pool=['...', '', '!!'], cands=['?', 'a'], threshold=0.7, shape={})                    # empty after tokenization
@example(pool=['the the the the', 'the'], cands=['the the', 'the the the the the'], threshold=0.5, shape={})
def test_filter_equals_reference(pool, cands, threshold, shape):
    ours = rouge_filter(cands, RougeIndex(pool, **shape), threshold)
    assert ours == reference_filter(cands, pool, threshold)


@SETTINGS
@given(st.lists(any_text, min_size=1, max_size=10), any_text, index_shapes)
def test_max_score_and_nearest_equal_reference(pool, text, shape):
    near = RougeIndex(pool, **shape).nearest(text, threshold=0.7)
    assert (near.score, near.index) == _reference_max(pool, text)


@SETTINGS
@given(st.lists(plain_text, min_size=1, max_size=10), plain_text)
def test_exactly_at_the_threshold(pool, text):
    "A score equal to the threshold rejects (>=); the next float above it keeps."
    score, _ = _reference_max(pool, text)
    assume(0 < score <= 1)
    assert rouge_filter([text], pool, score) == [Decision(False, score, _reference_max(pool, text)[1])]
    above = math.nextafter(score, 2)
    if above <= 1: assert rouge_filter([text], pool, above)[0].kept


def test_threshold_where_float_arithmetic_matters():
    "7 of 10 tokens shared: rouge-score's F is not the float 2L/(m+n); we must follow rouge-score, bit for bit."
    hits = 0
    for m in range(1, 17):
        for n in range(1, 17):
            for L in range(1, min(m, n) + 1):
                pool = [' '.join(['x'] * L + ['p'] * (m - L))]; cand = ' '.join(['x'] * L + ['q'] * (n - L))
                ref = reference_rouge_l(pool[0], cand)
                for thr in {ref, 2 * L / (m + n)}:
                    if 0 < thr <= 1:
                        assert rouge_filter([cand], pool, thr) == reference_filter([cand], pool, thr)
                hits += ref != 2 * L / (m + n)
    assert hits > 0   # such cases exist, and were decided as the reference decides them


def test_large_pool_uses_dense_rows_and_stays_exact():
    rng = random.Random(7)
    vocab = ['the', 'a', 'of'] * 20 + [f'w{i}' for i in range(60)]
    pool = [' '.join(rng.choices(vocab, k=rng.randint(1, 30))) for _ in range(1500)]
    index = RougeIndex(pool)
    assert index.dense and 'the' in {t for t, i in index.vocab.items() if i in index.dense}
    cands = [' '.join(rng.choices(vocab, k=rng.randint(1, 30))) for _ in range(4)] + \
            [' '.join(p.split()[1:]) for p in pool[:4]] + [' '.join(rng.choices(vocab, k=90))]
    assert rouge_filter(cands, index) == reference_filter(cands, pool)


# -- the command -----------------------------------------------------------------------------------------------
def _run(tmp_path, pool, cands, *extra):
    write_jsonl(tmp_path/'pool.jsonl', pool); write_jsonl(tmp_path/'cand.jsonl', cands)
    return dedup_cli(['--pool', str(tmp_path/'pool.jsonl'), '--candidates', str(tmp_path/'cand.jsonl'),
                      '--out', str(tmp_path/'kept.jsonl'), *extra])


def _read(path): return [json.loads(l) for l in open(path, encoding='utf-8')]


def test_cli_keeps_input_order_and_reports(tmp_path, capsys):
    pool = [{'id': 'p1', 'instruction': 'Write a poem about the sea.'}, {'id': 'p2', 'instruction': 'Explain recursion.'}]
    cands = [{'id': 'c1', 'instruction': 'Name three rivers in Europe.', 'input': 'x', 'extra': [1]},
             {'id': 'c2', 'instruction': 'Write a poem about the sea!'},
             {'id': 'c3', 'instruction': 'Name three rivers in Asia.'},
             {'id': 'c4', 'instruction': 'Summarise the text.', 'input': 'Lorem'}]
    assert _run(tmp_path, pool, cands, '--report', str(tmp_path/'rep.jsonl'), '--threshold', '0.7') == 0
    assert _read(tmp_path/'kept.jsonl') == [cands[0], cands[3]]              # records untouched, input order
    rep = _read(tmp_path/'rep.jsonl')
    assert [r['id'] for r in rep] == ['c1', 'c2', 'c3', 'c4'] and [r['line'] for r in rep] == [1, 2, 3, 4]
    assert [r['kept'] for r in rep] == [True, False, False, True]
    assert rep[1]['rouge_l'] == 1.0 and rep[1]['nearest'] == {'from': 'pool', 'line': 1, 'id': 'p1', 'instruction': pool[0]['instruction']}
    assert rep[2]['nearest']['from'] == 'candidates' and rep[2]['nearest']['id'] == 'c1'   # accepted earlier counts
    assert rep[2]['rouge_l'] == reference_rouge_l(cands[0]['instruction'], cands[2]['instruction'])
    assert 'kept 2 of 4' in capsys.readouterr().out


def test_cli_default_report_and_empty_pool(tmp_path, capsys):
    (tmp_path/'pool.jsonl').write_text('')
    write_jsonl(tmp_path/'cand.jsonl', [{'instruction': 'a b c'}, {'instruction': 'a b c'}])
    assert dedup_cli(['--pool', str(tmp_path/'pool.jsonl'), '--candidates', str(tmp_path/'cand.jsonl'), '--out', str(tmp_path/'k.jsonl')]) == 0
    assert [r['kept'] for r in _read(tmp_path/'k.report.jsonl')] == [True, False]


@pytest.mark.parametrize('bad, msg', [
    ('{"instruction": "ok"}\n{"instruction": ', 'cand.jsonl:2: broken JSON'),
    ('{"instruction": "ok"}\n\n{"id": "x"}\n', "cand.jsonl:3: field 'instruction' is missing"),
    ('{"instruction": 3}\n', "cand.jsonl:1: field 'instruction' must be a string"),
    ('[1, 2]\n', 'cand.jsonl:1: expected a JSON object'),
])
def test_cli_bad_input_names_file_and_line_and_writes_nothing(tmp_path, bad, msg):
    write_jsonl(tmp_path/'pool.jsonl', [{'instruction': 'x'}])
    (tmp_path/'cand.jsonl').write_text(bad)
    (tmp_path/'kept.jsonl').write_text('previous\n')
    with pytest.raises(InputError, match=msg):
        dedup_cli(['--pool', str(tmp_path/'pool.jsonl'), '--candidates', str(tmp_path/'cand.jsonl'), '--out', str(tmp_path/'kept.jsonl')])
    assert (tmp_path/'kept.jsonl').read_text() == 'previous\n'       # nothing overwritten
    assert not (tmp_path/'kept.report.jsonl').exists()


def test_cli_through_the_dispatcher(tmp_path, capsys):
    write_jsonl(tmp_path/'pool.jsonl', [{'instruction': 'x'}])
    args = ['dedup', '--pool', str(tmp_path/'pool.jsonl'), '--candidates', str(tmp_path/'missing.jsonl'), '--out', str(tmp_path/'o.jsonl')]
    assert lion_main(args) == 2
    assert 'missing.jsonl: file not found' in capsys.readouterr().err


def test_cli_refuses_to_overwrite_an_input_and_bad_threshold(tmp_path):
    write_jsonl(tmp_path/'pool.jsonl', [{'instruction': 'x'}]); write_jsonl(tmp_path/'cand.jsonl', [{'instruction': 'y'}])
    with pytest.raises(LionError, match='overwrite'):
        dedup_cli(['--pool', str(tmp_path/'pool.jsonl'), '--candidates', str(tmp_path/'cand.jsonl'), '--out', str(tmp_path/'pool.jsonl')])
    with pytest.raises(SystemExit) as e:
        dedup_cli(['--pool', str(tmp_path/'pool.jsonl'), '--candidates', str(tmp_path/'cand.jsonl'), '--out', str(tmp_path/'o.jsonl'), '--threshold', '1.5'])
    assert e.value.code == 2
