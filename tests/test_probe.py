"""The referee probe against a real local OpenAI-compatible server: a referee that sees the right answer
passes; a blind one (ties everywhere) fails, and with action='stop' the stage stops before spending more."""
import os, sys
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).parent))
from openai_server import serve  # noqa: E402

from lion_nb.core import LionError, ModelSpec, read_json  # noqa: E402
from lion_nb.discrimination import RefereeSettings, referee_messages, Pair  # noqa: E402
from lion_nb.llm import make_client  # noqa: E402
from lion_nb.probe import probe_pairs, run_probe  # noqa: E402

ITEMS = [(f'q{i}', f'Explain topic number {i}.', '', f'Topic {i} is explained here in several plain words, fully.')
         for i in range(5)]


def _user(p: Pair, order: str) -> str:
    return referee_messages(p.instruction, p.input, *p.shown(order))[-1]['content']


def blind(body):
    return 'Both are fine.\nAssistant 1: 5\nAssistant 2: 5'


def _client(srv, tmp_path):
    spec = ModelSpec(backend='openai', model='R', base_url=srv.base_url, max_retries=0, timeout_s=10)
    return make_client(spec, role='referee', stage='probe', cache_dir=tmp_path/'cache')


def test_a_referee_that_sees_the_right_answer_passes(tmp_path):
    pairs = probe_pairs(ITEMS, n=4, seed=3)
    duel = [Pair(id='d1', instruction='Say hi.', input='', teacher='Hello there, friend.', student='hi')]
    table = {**{_user(p, 'teacher_first'): (9, 2) for p in pairs + duel},
             **{_user(p, 'student_first'): (2, 9) for p in pairs + duel}}
    with serve(lambda body: 'Assistant 1: %d\nAssistant 2: %d' % table[body['messages'][-1]['content']]) as srv:
        s = run_probe(pairs, _client(srv, tmp_path), RefereeSettings(repair_retries=0), tmp_path, duel=duel)
        n_requests = srv.n_chat
    assert s['passed'] and s['probe']['accuracy'] == 1.0 and s['probe']['pairs'] == 12
    assert s['probe']['per_kind'] == {'empty': 1.0, 'other': 1.0, 'truncated': 1.0}
    assert s['probe']['tie_share'] == 0.0 and s['probe']['position_consistency'] == 1.0
    assert s['teacher_vs_student'] == {'items': 1, 'unscored': 0, 'teacher_ahead': 1.0, 'mean_gap': 7.0}
    assert n_requests == 2 * 13                      # both orders of every pair, nothing more
    assert read_json(tmp_path/'probe.json')['passed'] is True


def test_a_blind_referee_fails_and_can_stop_the_stage(tmp_path):
    pairs = probe_pairs(ITEMS, n=3, seed=0)
    with serve(blind) as srv:
        s = run_probe(pairs, _client(srv, tmp_path), RefereeSettings(repair_retries=0), tmp_path/'warn')
        assert not s['passed'] and s['probe']['accuracy'] == 0.0 and s['probe']['tie_share'] == 1.0
        assert 'cannot reliably tell' in s['message']
        with pytest.raises(LionError, match='cannot reliably tell'):
            run_probe(pairs, _client(srv, tmp_path), RefereeSettings(repair_retries=0), tmp_path/'stop', action='stop')
    assert read_json(tmp_path/'stop'/'probe.json')['passed'] is False   # the evidence is written before stopping
