"""Shared pytest setup: offline Hugging Face, the public data folder, one embedded server and one demo-shaped run
per session, and the grouping of tests that share a fixture when pytest-xdist runs them in several workers.

`embedded_server` starts the real embedded teacher server (llama.cpp via xllamacpp) once per test
session, on its own state file, and stops it at the end. While it runs, `$LION_SERVER_STATE` points at
that state file, so code under test that calls `lion_nb.models.ensure_server()` (the 'embedded' backend)
reuses this very server instead of starting another one, and a server you started yourself with
`lion_nb models serve` is left alone.

`demo_run` is one whole demo-shaped run (`lion_nb run`: 1 round and the final imitation, papermill, torchrun, the
tiny random student; every remote role played by the scripted local server of `lion_fixtures`), built once per
session for every test that checks a whole run: tests/test_e2e.py checks it stage by stage, resumes a killed copy
to the same outcome and forks a study from it; tests/test_reliability.py checks that the fake key its remote model
reads from $LION_FAKE_KEY was sent and was written nowhere.

`make pytest` runs the tests in 2 pytest-xdist workers (`-n 2 --dist loadgroup`), each with a session of its own.
Tests that share one of our module- or session-scoped fixtures (a run, a server, a trained model) form a group that
one worker runs, in file order, so the fixture is built once and tests that depend on that order keep it (the fault
tests of tests/test_reliability.py run their stages in turn); every other test goes to whichever worker is free.
"""
import inspect, json, os, secrets, shutil, subprocess, tempfile
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('HF_HUB_OFFLINE', '1')           # nothing is ever fetched from a model hub in tests
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
# OpenMP threads that sleep instead of spinning while they wait: on a busy 2-core machine a spinning torch
# or llama.cpp thread that loses its core stalls its partner at every barrier (measured: a 135M-model
# generate test 84 s spinning vs 20 s passive; the teacher server 1.7 vs 11 tok/s). Set before torch loads.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
os.environ.setdefault('LION_DATA_DIR', str((ROOT.parent/'shared'/'data').resolve()))

@pytest.fixture(scope='session')
def embedded_server(tmp_path_factory):
    "The base URL (`http://127.0.0.1:PORT/v1`) of a real embedded teacher server shared by the whole session."
    from lion_nb import models
    state = tmp_path_factory.mktemp('embedded_server')/'server.json'
    before = os.environ.get('LION_SERVER_STATE')
    os.environ['LION_SERVER_STATE'] = str(state)
    try:
        yield models.ensure_server(state=state)
    finally:
        models.stop_all_servers(state)
        if before is None: os.environ.pop('LION_SERVER_STATE', None)
        else: os.environ['LION_SERVER_STATE'] = before


@pytest.fixture
def openai_server():
    "A fresh local OpenAI-compatible server (`lion_nb.testing`) per test (defaults: no latency, no faults)."
    from lion_nb.testing import serve
    with serve() as srv: yield srv


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
    """One demo-shaped run (`lion_nb run`, 1 round and the final imitation) against the scripted server, whose remote
    model reads a recognisable fake key from $LION_FAKE_KEY. A dict: the server `srv`, the `key`, the `env` a
    subprocess needs for it, the configuration `cfg`, `config(path, base_url, **remote)` for another configuration of
    the same shape (the remote model's settings changed), the finished process `proc` (its `stdout` and `stderr`), the
    `run`, the Authorization headers the server had received when it ended (`auth`), and the folder `d` holding all."""
    from lion_nb.core import RunDir
    from lion_nb.testing import serve
    from lion_fixtures import LION, lion_reply, tiny_config, tiny_student
    key = f'sk-lionfake-{secrets.token_hex(12)}'
    env = {**os.environ, 'LION_FAKE_KEY': key, 'HF_HUB_OFFLINE': '1'}
    d = tmp_path_factory.mktemp('demo_run'); student = tiny_student(d/'student')
    with serve(reply=lion_reply) as srv:
        def config(path, base_url, **remote):
            spec = dict(backend='openai', model='scripted', base_url=base_url, concurrency=8, max_retries=6, timeout_s=20,
                        api_key_env='LION_FAKE_KEY')
            return tiny_config(path, base_url, student, models={'remote': {**spec, **remote}})
        cfg = config(d/'tiny.yaml', srv.base_url)
        p = subprocess.run(LION + ['run', '--config', str(cfg), '--run-dir', str(d/'run')], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=900)
        yield dict(srv=srv, key=key, env=env, cfg=cfg, config=config, proc=p, run=RunDir(d/'run'), auth=Counter(srv.auth), d=d)


def _shared_fixtures(item) -> set[str]:
    "The module- and session-scoped fixtures of tests/ that `item` uses, directly or through other fixtures."
    here = Path(__file__).resolve().parent
    names, info = set(), getattr(item, '_fixtureinfo', None)        # a test function's fixture closure
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        d = defs[-1]
        try: ours = Path(inspect.getfile(d.func)).resolve().parent == here
        except TypeError: ours = False
        if ours and d.scope in ('module', 'session'):
            names.add(name if d.scope == 'session' else f'{item.module.__name__}::{name}')
    return names


def _groups(items) -> dict[str, str]:
    """The xdist group of each test that has one: its `xdist_group` marks (named as pytest-xdist names them), else the
    group of tests that share a module- or session-scoped fixture of ours with it (directly, or through another test
    that uses both), named after one of those fixtures (a session fixture's name, else `module::fixture`)."""
    parent: dict[str, str] = {}
    def find(x):
        while parent.setdefault(x, x) != x: x = parent[x]
        return x
    marked, uses = {}, {}
    for item in items:
        if marks := {str(m.args[0] if m.args else m.kwargs.get('name', 'default')) for m in item.iter_markers('xdist_group')}:
            marked[item.nodeid] = '_'.join(sorted(marks)); continue
        if names := sorted(_shared_fixtures(item)):
            uses[item.nodeid] = names
            for n in names[1:]: parent[find(n)] = find(names[0])
    members: dict[str, set] = {}
    for names in uses.values(): members.setdefault(find(names[0]), set()).update(names)
    label = {root: min(ns, key=lambda n: ('::' in n, n)) for root, ns in members.items()}   # a session fixture first
    return {**{nodeid: label[find(names[0])] for nodeid, names in uses.items()}, **marked}


# pytest-xdist's own `--dist loadgroup` groups nothing on pytest 9.2 (pytest-xdist issue #1386: it marks a group by
# appending '@group' to `item._nodeid`, which pytest 9.2's structured node ids ignore), and it cannot see which tests
# share a fixture. So under `--dist loadgroup` the controller uses `_FixtureGroups`: each worker writes the groups of
# its collection (`_groups`) to a file the controller named in its `workerinput`, and the controller's scheduler
# reads them when it starts scheduling (all workers have collected by then).

@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    "Controller, per worker: where the worker writes the groups of its collection."
    folder = getattr(node.config, '_lion_xdist_groups', None)
    if folder: node.workerinput['lion_xdist_groups'] = str(folder)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    "Controller: `--dist loadgroup` with the groups our workers computed."
    if not hasattr(config, '_lion_xdist_groups'): return None
    from xdist.scheduler import LoadGroupScheduling

    class _FixtureGroups(LoadGroupScheduling):
        "LoadGroupScheduling whose groups are the workers' `_groups` (any test without one is a unit of its own)."
        groups = None
        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                files = sorted(config._lion_xdist_groups.glob('*.json'))
                self.groups = json.loads(files[0].read_text()) if files else {}
            return self.groups.get(nodeid) or super()._split_scope(nodeid)
    return _FixtureGroups(config, log)


def pytest_configure(config):
    if not hasattr(config, 'workerinput') and config.pluginmanager.hasplugin('xdist') and config.getvalue('dist') == 'loadgroup':
        config._lion_xdist_groups = Path(tempfile.mkdtemp(prefix='lion_xdist_groups-'))


def pytest_unconfigure(config):
    if hasattr(config, '_lion_xdist_groups'): shutil.rmtree(config._lion_xdist_groups, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    "Worker under `--dist loadgroup`: write the groups of this collection for the controller's scheduler."
    folder = getattr(config, 'workerinput', {}).get('lion_xdist_groups')
    if folder:
        out = Path(folder)/f"{config.workerinput['workerid']}.json"
        tmp = out.with_suffix('.tmp'); tmp.write_text(json.dumps(_groups(items))); tmp.replace(out)
