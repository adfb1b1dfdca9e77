"""Shared pytest setup: offline Hugging Face, the public data folder, one embedded server and one demo-shaped run
per session.

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
"""
import os, secrets, subprocess
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
