"""The referee probe against a real local OpenAI-compatible server: a referee that sees the right answer
passes; a blind one (ties everywhere) fails, and with action='stop' the stage stops before spending more.
Also: the discrimination stage runs the probe first, and `lion_nb referee --probe` runs it alone."""
import json, os, sys
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import serve  # noqa: E402

from lion_nb.core import Answer, LionError, ModelSpec, ROLES, parse_config, read_json, write_jsonl  # noqa: E402
from lion_nb.discrimination import RefereeSettings, known_pair, referee_cli, run_probe  # noqa: E402
from lion_nb.judging import referee_messages  # noqa: E402
from lion_nb.llm import make_client  # noqa: E402
from lion_nb.probe import probe_pairs  # noqa: E402

ITEMS = [(f'q{i}', f'Explain topic number {i}.', '', f'Topic {i} is explained here in several plain words, fully.')
         for i in range(5)]


def _user(p, order: str) -> str:
    return referee_messages(p.instruction, p.input, *p.shown(order))[-1]['content']


def sighted(pairs):
    "A referee that gives 9 to the right answer (the teacher slot) and 2 to the other, whichever order it sees."
    table = {**{_user(known_pair(p), 'teacher_first'): (9, 2) for p in pairs},
             **{_user(known_pair(p), 'student_first'): (2, 9) for p in pairs}}
    return lambda body: 'Assistant 1: %d\nAssistant 2: %d' % table[body['messages'][-1]['content']]


def blind(body):
    return 'Both are fine.\nAssistant 1: 5\nAssistant 2: 5'


def _cfg(base_url):
    "A run configuration whose referee is the test server's model R and repairs nothing."
    m = {'backend': 'openai', 'model': 'R', 'base_url': base_url, 'max_retries': 0, 'timeout_s': 10}
    return parse_config({'models': {'R': m}, 'roles': {r: 'R' for r in ROLES}, 'sampling': {'repair_retries': 0}})


def _client(srv, tmp_path):
    spec = ModelSpec(backend='openai', model='R', base_url=srv.base_url, max_retries=0, timeout_s=10)
    return make_client(spec, role='referee', stage='probe', cache_dir=tmp_path/'cache')


def test_a_referee_that_sees_the_right_answer_passes(tmp_path):
    pairs = probe_pairs(ITEMS, n=4, seed=3)
    with serve(sighted(pairs)) as srv:
        cfg = _cfg(srv.base_url)
        s = run_probe(pairs, _client(srv, tmp_path), RefereeSettings.from_config(cfg), tmp_path,
                      cfg.probe.min_accuracy, cfg.probe.action)
        n_requests = srv.n_chat
    assert s['passed'] and s['probe']['accuracy'] == 1.0 and s['probe']['pairs'] == 12
    assert s['probe']['per_kind'] == {'empty': 1.0, 'other': 1.0, 'truncated': 1.0}
    assert s['probe']['tie_share'] == 0.0 and s['probe']['position_consistency'] == 1.0
    assert s['probe']['mean_gap'] == 7.0
    assert n_requests == 2 * 12                      # both orders of every pair, nothing more
    assert read_json(tmp_path/'probe.json')['passed'] is True


def test_a_blind_referee_fails_and_can_stop_the_stage(tmp_path):
    pairs = probe_pairs(ITEMS, n=3, seed=0)
    with serve(blind) as srv:
        cfg = _cfg(srv.base_url)
        settings = RefereeSettings.from_config(cfg)
        s = run_probe(pairs, _client(srv, tmp_path), settings, tmp_path/'warn', cfg.probe.min_accuracy, 'warn')
        assert not s['passed'] and s['probe']['accuracy'] == 0.0 and s['probe']['tie_share'] == 1.0
        assert 'cannot reliably tell' in s['message']
        with pytest.raises(LionError, match='cannot reliably tell'):
            run_probe(pairs, _client(srv, tmp_path), settings, tmp_path/'stop', cfg.probe.min_accuracy, 'stop')
    assert read_json(tmp_path/'stop'/'probe.json')['passed'] is False   # the evidence is written before stopping


def test_referee_cli_probe_alone(tmp_path, capsys):
    "`lion_nb referee --probe`: the teacher's answers only; exit 1 when the referee fails the probe."
    answers = tmp_path/'teacher.jsonl'
    write_jsonl(answers, [Answer(id=i, instruction=q, input=x, output=a, role='teacher', model='T')
                          for i, q, x, a in ITEMS])
    cfg = tmp_path/'cfg.yaml'
    with serve(blind) as srv:
        m = {'backend': 'openai', 'model': 'R', 'base_url': srv.base_url, 'max_retries': 0, 'timeout_s': 10}
        cfg.write_text(json.dumps({'models': {'R': m}, 'roles': {r: 'R' for r in
                                   ('teacher', 'referee', 'generator', 'judge', 'student')},
                                   'probe': {'items': 3}, 'sampling': {'repair_retries': 0}}))
        rc = referee_cli(['--config', str(cfg), '--teacher', str(answers), '--out', str(tmp_path/'out'), '--probe'])
    assert rc == 1 and json.loads(capsys.readouterr().out)['tie_share'] == 1.0
    assert read_json(tmp_path/'out'/'probe.json')['probe']['pairs'] == 9
