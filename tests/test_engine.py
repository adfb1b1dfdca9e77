"""The student on an engine (lion_nb.engine): each new checkpoint is served, used through the LLM layer and
stopped. The launch command is our own `serve-hf` (an OpenAI-compatible server over transformers), started,
health-checked and stopped exactly as `vllm serve` would be, so all of it runs without a GPU."""
import json, os, shutil, signal, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lion_fixtures import lion_reply, tiny_config  # noqa: E402
from lion_nb.testing import serve  # noqa: E402

from lion_nb.core import LionError, ModelSpec, RunDir, load_config, write_jsonl, Instruction
from lion_nb.engine import EngineClient, EngineServer, http_json
from lion_nb.llm import ChatRequest, checkpoint_fingerprint, make_client, student_spec
from lion_nb.train import make_tiny_llama

os.environ.setdefault('TQDM_DISABLE', '1')
LAUNCH = '{python} -m lion_nb.engine serve-hf {checkpoint} --host {host} --port {port} --name {name}'
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def base(tmp_path_factory) -> Path:
    "A tiny random Llama whose tokenizer has no chat template (like LLaMA-7B), built once for this module."
    ckpt = make_tiny_llama(tmp_path_factory.mktemp('engine')/'base')
    (ckpt/'chat_template.jinja').unlink()
    return ckpt


def trained(base: Path, folder: Path, seed: int) -> Path:
    "A copy of `base` with other random weights: what an imitation stage writes."
    import torch
    from safetensors.torch import load_file, save_file
    shutil.copytree(base, folder)
    g = torch.Generator().manual_seed(seed)
    w = {k: v + 0.5*torch.randn(v.shape, generator=g) for k, v in load_file(base/'model.safetensors').items()}
    save_file(w, folder/'model.safetensors', metadata={'format': 'pt'})
    return folder


def gone(pid: int) -> bool:
    try: os.killpg(pid, 0)
    except ProcessLookupError: return True
    return False


def reqs(n):
    return [ChatRequest(f'q{i}', [{'role': 'user', 'content': f'Name {i} colours.'}], max_tokens=6) for i in range(n)]


def test_each_new_checkpoint_is_served_recorded_used_and_stopped(tmp_path, base):
    a, b = base, trained(base, tmp_path/'b', 1)
    spec = ModelSpec(backend='vllm', model=str(a), launch=LAUNCH, startup_timeout_s=120, concurrency=4)
    eng, rs = tmp_path/'engine', reqs(3)
    c = make_client(spec, role='student', cache_dir=tmp_path/'cache', engine_dir=eng)
    assert c.server is None                                    # nothing starts before a request needs it
    out = c.run(rs)
    url, pid = c.server.base_url, c.server.record['pid']
    assert all(r.status == 'done' for r in out)
    # a base model: every prompt went to /v1/completions; the chat route, which this server rejects, was never used
    assert http_json(url[:-3] + '/_stats')[1] == {'chat': 0, 'completions': 3, 'rejected_chat': 0}
    chat = urllib.request.Request(url + '/chat/completions', headers={'Content-Type': 'application/json'},
                                  data=json.dumps({'model': 'lion-student', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode())
    with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(chat, timeout=30)
    assert e.value.code == 400
    # the served answers are the checkpoint's own greedy answers, prompted by the same rule as the transformers path
    ref = make_client(ModelSpec(backend='hf', model=str(a)), role='student').run(rs)
    assert [r.text for r in out] == [r.text for r in ref]
    c.close()
    assert gone(pid) and http_json(url + '/models', 1)[0] == 0
    rec = json.loads((eng/'launch-1.json').read_text())
    assert rec['command'][:4] == [sys.executable, '-m', 'lion_nb.engine', 'serve-hf'] and rec['checkpoint'] == str(a.resolve())
    assert rec['fingerprint'] == checkpoint_fingerprint(a) and rec['served_name'] == 'lion-student'
    assert rec['started'] <= rec['healthy'] <= rec['stopped']
    assert 'POST /v1/completions' in (eng/'server-1.log').read_text()

    # the next imitation stage wrote a new checkpoint: a new server on it, and none of the previous answers
    c2 = make_client(student_spec(spec, b), role='student', cache_dir=tmp_path/'cache', engine_dir=eng)
    out2 = c2.run(rs)
    pid2 = c2.server.record['pid']
    assert not any(r.cached for r in out2) and c2.stats['calls'] == 3 and [r.text for r in out2] != [r.text for r in out]
    assert json.loads((eng/'launch-2.json').read_text())['checkpoint'] == str(b.resolve())
    del c2                                                     # dropping the client stops its server too
    assert gone(pid2)

    # the first checkpoint again: all from the cache, and nothing is started
    c3 = make_client(spec, role='student', cache_dir=tmp_path/'cache', engine_dir=eng)
    assert all(r.cached for r in c3.run(rs)) and c3.server is None and not (eng/'launch-3.json').exists()
    c3.close()


def test_discrimination_serves_the_new_checkpoint_under_the_stage_folder(tmp_path, base):
    "The stage asks for the newest trained student: it is served with the configured launch command, then stopped."
    from lion_nb.discrimination import run_discrimination
    run = RunDir(tmp_path/'run')
    run.stage_dir(1, 'imitation').mkdir(parents=True)
    ckpt = trained(base, run.stage_dir(1, 'imitation')/'model', 2)
    with serve(lion_reply) as srv:
        student = dict(backend='vllm', model='models/base-7b', launch=LAUNCH, startup_timeout_s=120, concurrency=4)
        cfg = load_config(tiny_config(tmp_path/'run.yaml', srv.base_url, ckpt, models={'student': student},
                                      sampling={'max_new_tokens': 6}))
        write_jsonl(run.pool(1, 'cache'), [Instruction(id=f'c{i}', instruction=f'Describe thing {i}.') for i in range(3)])
        s = run_discrimination(cfg, run, 1, progress=None)
    eng = run.stage_dir(1, 'discrimination')/'engine'
    rec = json.loads((eng/'launch-1.json').read_text())
    assert rec['checkpoint'] == str(ckpt.resolve()) and s['student'] == 'iter_1/imitation/model'
    assert 'stopped' in rec and gone(rec['pid'])               # stopped before the stage returned
    assert (eng/'server-1.log').read_text().count('POST /v1/completions') == 3


def test_vllm_without_a_gpu_or_without_vllm_fails_before_anything_starts(tmp_path, monkeypatch):
    ckpt = tmp_path/'ckpt'; ckpt.mkdir(); (ckpt/'config.json').write_text('{}')
    c = EngineClient(ModelSpec(backend='vllm', model=str(ckpt)), role='student', engine_dir=tmp_path/'engine')
    with pytest.raises(LionError, match=r'needs 1 GPU\(s\) per replica.*0 visible'):
        EngineServer(c.spec, ckpt, tmp_path/'engine').start()
    monkeypatch.setattr('lion_nb.engine.visible_gpus', lambda: 8)
    monkeypatch.setattr('lion_nb.engine.gpu_memory_bytes', lambda: 80*10**9)
    if shutil.which('vllm') is None:
        with pytest.raises(LionError, match=r"pip install 'lion_nb\[gpu\]'"):
            EngineServer(c.spec, ckpt, tmp_path/'engine').start()
    assert not list((tmp_path/'engine').glob('launch-*.json'))


KILLED_STAGE = """
import sys, time
from lion_nb.core import ModelSpec
from lion_nb.engine import EngineServer
srv = EngineServer(ModelSpec(backend='vllm', model=sys.argv[1], launch=sys.argv[2], startup_timeout_s=60), sys.argv[1], sys.argv[3]).start()
print(srv.record['pid'], srv.base_url, flush=True)
time.sleep(600)
"""


def test_a_stage_killed_with_sigkill_leaves_no_server_behind(tmp_path):
    "The supervisor stops the engine's process group when the process that started it is gone."
    ckpt = tmp_path/'ckpt'; ckpt.mkdir(); (ckpt/'config.json').write_text('{}')
    launch = '{python} -m lion_nb.testing --port {port}'     # any OpenAI-compatible server
    p = subprocess.Popen([sys.executable, '-c', KILLED_STAGE, str(ckpt), launch, str(tmp_path/'engine')], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid, url = p.stdout.readline().split()
        assert http_json(url + '/models')[0] == 200 and not gone(int(pid))
    finally:
        os.kill(p.pid, signal.SIGKILL); p.wait()
    t0 = time.monotonic()
    while not gone(int(pid)) and time.monotonic() - t0 < 20: time.sleep(0.1)
    assert gone(int(pid)) and http_json(url + '/models', 1)[0] == 0
