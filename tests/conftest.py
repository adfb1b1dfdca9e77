"""Shared pytest setup: offline Hugging Face, the public data folder, and one embedded server per session.

`embedded_server` starts the real embedded teacher server (llama.cpp via xllamacpp) once per test
session, on its own state file, and stops it at the end. While it runs, `$LION_SERVER_STATE` points at
that state file, so code under test that calls `lion_nb.models.ensure_server()` (the 'embedded' backend)
reuses this very server instead of starting another one, and a server you started yourself with
`lion_nb models serve` is left alone.
"""
import os
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
