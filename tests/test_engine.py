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
    ckpt = tmp_path/'ckpt'; ckpt.mkdir(); (ckpt/'config.json').write_text('{"max_position_embeddings": 2048}')
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


# ---------------------------------------------------------------- issue 26: the GPU handoff, context, explicit close

FAKE_SMI = '#!/bin/sh\ncat "$LION_FAKE_SMI"\n'      # prints what the test wrote: "index, MiB used" per GPU


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    "A fake `nvidia-smi` first on PATH; the test sets the memory it reports by writing to the returned file."
    bin_dir, reading = tmp_path/'bin', tmp_path/'smi.csv'
    bin_dir.mkdir()
    (bin_dir/'nvidia-smi').write_text(FAKE_SMI)
    (bin_dir/'nvidia-smi').chmod(0o755)
    reading.write_text('0, 500\n')
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv('LION_FAKE_SMI', str(reading))
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    return reading


def test_gpu_memory_is_read_for_the_visible_gpus(fake_smi, monkeypatch):
    from lion_nb.engine import gpu_memory_used
    fake_smi.write_text('0, 500\n1, 70000\n')
    assert gpu_memory_used() == {0: 500, 1: 70000}
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '1')                # another job's GPU 0 is not ours to wait for
    assert gpu_memory_used() == {1: 70000}


def test_stop_waits_for_the_group_and_the_gpu_memory(tmp_path, fake_smi):
    """`stop` returns once the server's process group is gone and the GPU memory is back to its pre-launch reading
    (nvidia-smi, faked here), so the next `vllm serve` finds it free; past the cap it warns and says so in the record.
    It used to return right after the SIGKILL, whatever the GPU still held."""
    from lion_nb.engine import gpu_memory_used
    ckpt = tmp_path/'ckpt'; ckpt.mkdir(); (ckpt/'config.json').write_text('{}')
    spec = ModelSpec(backend='vllm', model=str(ckpt), launch='{python} -m lion_nb.testing --port {port}', startup_timeout_s=60)
    assert gpu_memory_used() == {0: 500}
    srv = EngineServer(spec, ckpt, tmp_path/'engine').start()
    fake_smi.write_text('0, 70000\n')                          # the engine holds the GPU
    def release(): time.sleep(1.5); fake_smi.write_text('0, 700\n')
    import threading; threading.Thread(target=release, daemon=True).start()
    t0 = time.monotonic(); srv.stop(); took = time.monotonic() - t0
    rec = json.loads(srv.record_path.read_text())
    assert took >= 1.4 and rec['memory_back'] and rec['group_gone'] and gone(rec['pid'])
    srv2 = EngineServer(spec, ckpt, tmp_path/'engine').start()    # restarted at once, on the memory given back
    fake_smi.write_text('0, 70000\n')                          # and this time it never comes back
    with pytest.warns(UserWarning, match='the GPU memory to come back'): srv2.stop(cap_s=1.0)
    rec2 = json.loads(srv2.record_path.read_text())
    assert rec2['group_gone'] and not rec2['memory_back'] and 1.0 <= rec2['waited_s'] < 5


def test_group_alive_counts_running_processes_not_zombies():
    from lion_nb.engine import group_alive
    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True)
    assert group_alive(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    t0 = time.monotonic()
    while group_alive(p.pid) and time.monotonic() - t0 < 10: time.sleep(0.05)
    assert not group_alive(p.pid)                                 # a zombie (not reaped yet) holds no memory
    p.wait()


def test_requests_are_capped_at_the_context_left_by_the_prompt(tmp_path):
    """A student with a 64-position context: a 200-token limit is cut to what the prompt leaves. The stand-in refuses
    what overflows with vLLM's 400 (checked first with a raw request), which the uncapped client used to get."""
    ckpt = make_tiny_llama(tmp_path/'short', max_positions=64)
    spec = ModelSpec(backend='vllm', model=str(ckpt), launch=LAUNCH, startup_timeout_s=120)
    c = make_client(spec, role='student', engine_dir=tmp_path/'engine')
    req = ChatRequest('q', [{'role': 'user', 'content': 'Name some colours.'}], max_tokens=200)
    body = c.body(req)
    n_prompt = len(c.tokenizer()(body['prompt'], add_special_tokens=body.get('add_special_tokens', True))['input_ids'])
    try:
        assert c.server is None and c.base_url                   # starts the server
        raw = urllib.request.Request(c.base_url + '/completions', headers={'Content-Type': 'application/json'},
                                     data=json.dumps({**body, 'model': 'lion-student'}).encode())
        with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(raw, timeout=60)
        assert e.value.code == 400 and 'maximum context length is 64 tokens' in e.value.read().decode()
        assert c._wire(body)['max_tokens'] == 64 - n_prompt
        out = c.run([req])
        assert out[0].status == 'done' and out[0].prompt_tokens + out[0].completion_tokens <= 64
    finally: c.close()


def test_a_stage_closes_its_engine_client_even_when_it_fails(tmp_path, base, monkeypatch):
    """Discrimination's student answers close their client (and stop its engine) before the error leaves the stage.
    The traceback pytest keeps would hold the client alive, and with it the server, when a finalizer was the only
    thing that stopped it."""
    import lion_nb.discrimination as D
    run = RunDir(tmp_path/'run')
    spec = ModelSpec(backend='vllm', model=str(base), launch=LAUNCH, startup_timeout_s=120, concurrency=2)
    pids = []
    def answers_then_fail(pool, client, out, **kw):
        client.run(reqs(1))
        pids.append(client.server.record['pid'])
        raise RuntimeError('the stage failed after the student answered')
    monkeypatch.setattr(D, 'answer_pool', answers_then_fail)
    with serve(lion_reply) as srv:
        cfg = load_config(tiny_config(tmp_path/'run.yaml', srv.base_url, base))
        with pytest.raises(RuntimeError, match='stage failed') as err:
            D._stage_answers(cfg, run, 1, [Instruction(id='c0', instruction='Describe a thing.')], 'student', spec)
    assert err.traceback and pids and gone(pids[0])
