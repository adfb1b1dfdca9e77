"""Release: weight diffs (round trip, wrong base, resized embeddings), the model card, and the chat (tmux, Chromium)."""
import base64, json, os, re, shlex, shutil, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from lion_nb.cli import main
from lion_nb.core import RunDir, sha256_file, write_json
from lion_nb.card import card_cli, example_run
from lion_nb.chat import ChatSession, load_chat_model, tiny_chat_model
from lion_nb.weights import EXTRA, MANIFEST_NAME, read_all_tensors, recover, same_tensors, tiny_checkpoint

CLI = [sys.executable, '-c', 'import sys; from lion_nb.cli import main; sys.exit(main())']


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob('*'))


# ---------------------------------------------------------------- weight diffs

def test_weights_round_trip_is_bit_exact(tmp_path, capsys):
    "diff then recover through the CLI: every tensor equal (torch.equal on the bits), files byte-identical, shards kept."
    base = tiny_checkpoint(tmp_path/'base', dim=16)
    tuned = tiny_checkpoint(tmp_path/'tuned', seed=3, like=base, perturb=1e-2, extra_tokens=5, new_tensor=True, shards=3)
    assert main(['weights', 'diff', '--base', str(tmp_path/'base'), '--tuned', str(tmp_path/'tuned'),
                 '--out', str(tmp_path/'diff'), '--chunk-mb', '0.0005']) == 0
    assert 'resized (extra rows stored whole): model.embed_tokens.weight' in capsys.readouterr().out
    man = json.loads((tmp_path/'diff'/MANIFEST_NAME).read_text())
    e = man['tensors']['model.embed_tokens.weight']
    assert (e['shared_rows'], e['extra_rows'], e['base']['shape']) == (32, 5, [32, 16])
    assert man['tensors']['model.layers.0.self_attn.q_proj.weight']['dtype'] == 'BF16'
    assert all(len(x['sha256']) == 64 for x in man['tensors'].values())
    assert (tmp_path/'diff'/'config.json').exists() and (tmp_path/'diff'/'tokenizer_config.json').exists()
    assert main(['weights', 'recover', '--base', str(tmp_path/'base'), '--diff', str(tmp_path/'diff'),
                 '--out', str(tmp_path/'rec'), '--chunk-mb', '0.0005']) == 0
    got = read_all_tensors(tmp_path/'rec')
    assert got.keys() == tuned.keys()
    for k in tuned:
        assert got[k].dtype == tuned[k].dtype and torch.equal(got[k], tuned[k]), k
    assert _tree(tmp_path/'rec') == _tree(tmp_path/'tuned')
    for f in (tmp_path/'tuned').glob('*.safetensors'): assert sha256_file(tmp_path/'rec'/f.name) == sha256_file(f)


def test_diff_is_tuned_minus_base(tmp_path):
    "The stored diff is the arithmetic difference (a task vector), and extra rows are stored whole."
    from safetensors.torch import load_file
    base = tiny_checkpoint(tmp_path/'base')
    tuned = tiny_checkpoint(tmp_path/'tuned', like=base, perturb=1e-3, extra_tokens=2)
    main(['weights', 'diff', '--base', str(tmp_path/'base'), '--tuned', str(tmp_path/'tuned'), '--out', str(tmp_path/'diff')])
    d = load_file(str(tmp_path/'diff'/'diff-model.safetensors'))
    k = 'model.layers.0.mlp.up_proj.weight'
    assert torch.equal(d[k], tuned[k] - base[k])
    assert torch.equal(d[EXTRA + 'model.embed_tokens.weight'], tuned['model.embed_tokens.weight'][32:])


def test_real_resized_model_round_trip(tmp_path):
    "A transformers model whose tokenizer gained tokens (resize_token_embeddings): recovered, it reloads and matches."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = tiny_chat_model(tmp_path/'base')
    model, tok = load_chat_model(base)
    tok.add_special_tokens({'additional_special_tokens': ['<tool>', '</tool>']})
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        for p in model.parameters(): p.add_(torch.randn_like(p) * 1e-3)
    model.save_pretrained(tmp_path/'tuned'); tok.save_pretrained(tmp_path/'tuned')
    main(['weights', 'diff', '--base', str(base), '--tuned', str(tmp_path/'tuned'), '--out', str(tmp_path/'diff')])
    man = json.loads((tmp_path/'diff'/MANIFEST_NAME).read_text())
    assert 'model.embed_tokens.weight' in man['stats']['resized']
    main(['weights', 'recover', '--base', str(base), '--diff', str(tmp_path/'diff'), '--out', str(tmp_path/'rec')])
    again = AutoModelForCausalLM.from_pretrained(tmp_path/'rec', local_files_only=True)
    assert same_tensors(again.state_dict(), model.state_dict())
    assert len(AutoTokenizer.from_pretrained(tmp_path/'rec', local_files_only=True)) == len(tok)


def test_wrong_base_is_refused_before_writing(tmp_path, capsys):
    base = tiny_checkpoint(tmp_path/'base')
    tiny_checkpoint(tmp_path/'tuned', like=base, perturb=1e-3, seed=1)
    main(['weights', 'diff', '--base', str(tmp_path/'base'), '--tuned', str(tmp_path/'tuned'), '--out', str(tmp_path/'diff')])
    wrong = dict(base); wrong['model.layers.0.mlp.up_proj.weight'] = base['model.layers.0.mlp.up_proj.weight'].clone()
    wrong['model.layers.0.mlp.up_proj.weight'][3, 2] += 1e-6                        # one element off
    tiny_checkpoint(tmp_path/'wrong', like=wrong)
    before = _tree(tmp_path)
    assert main(['weights', 'recover', '--base', str(tmp_path/'wrong'), '--diff', str(tmp_path/'diff'), '--out', str(tmp_path/'rec')]) == 2
    err = capsys.readouterr().err
    assert "tensor 'model.layers.0.mlp.up_proj.weight'" in err and 'not the base model' in err and 'Nothing was written' in err
    assert _tree(tmp_path) == before                                                  # nothing written, not even a temp folder
    tiny_checkpoint(tmp_path/'other', like={k: v for k, v in base.items() if 'q_proj' not in k})
    with pytest.raises(Exception, match="q_proj.weight' is missing"):                 # a base lacking a tensor
        recover(tmp_path/'other', tmp_path/'diff', tmp_path/'rec')
    assert not (tmp_path/'rec').exists()


def test_corrupted_diff_is_detected_and_cleaned_up(tmp_path):
    base = tiny_checkpoint(tmp_path/'base')
    tiny_checkpoint(tmp_path/'tuned', like=base, perturb=1e-3, seed=1)
    main(['weights', 'diff', '--base', str(tmp_path/'base'), '--tuned', str(tmp_path/'tuned'), '--out', str(tmp_path/'diff')])
    f = tmp_path/'diff'/'diff-model.safetensors'
    data = bytearray(f.read_bytes()); data[-3] ^= 0x40; f.write_bytes(bytes(data))
    with pytest.raises(Exception, match='SHA256'):
        recover(tmp_path/'base', tmp_path/'diff', tmp_path/'rec')
    assert not (tmp_path/'rec').exists() and not list(tmp_path.glob('.rec*'))
    (tmp_path/'taken').mkdir(); (tmp_path/'taken'/'x').write_text('keep me')
    with pytest.raises(Exception, match='refusing to overwrite'):
        recover(tmp_path/'base', tmp_path/'diff', tmp_path/'taken')
    assert (tmp_path/'taken'/'x').read_text() == 'keep me'


# ---------------------------------------------------------------- model card

def test_card_from_a_finished_run(tmp_path, capsys):
    run = example_run(tmp_path/'run')
    assert card_cli(['--run-dir', str(run)]) == 0
    card = run/'iter_2'/'imitation'/'model'/'README.md'
    text = card.read_text()
    front = yaml.safe_load(text.split('---\n')[1])
    assert front['license'] == 'cc-by-nc-4.0' and front['base_model'] == 'HuggingFaceTB/SmolLM2-135M-Instruct'
    assert front['datasets'] == ['tatsu-lab/alpaca'] and front['language'] == ['en'] and 'lion' in front['tags']
    for s in ('| teacher | gpt-3.5-turbo | openai |', '| student | smollm2-135m-instruct | embedded |',
              '| 2 | 4 | 10 | yes | imitation: examples=4; discrimination: hard=3, easy=7 |',
              'Training examples over all iterations: 8.', '| lr | 2e-05 |', '| epochs | 3.0 |',
              '| **overall** | 81.25 |', '| math | 40.00 |', '| teacher | 55 | 126 | 71 | 0.47 |',
              '| bbh | date_understanding | 44.00 |', '| **AGIEval average** |  | 25.75 |',
              '| **BBH average, all tasks** |  | 44.00 |', '| base student | 60.00 | 20 / 100 / 132 |',
              'Research use only', 'CC BY-NC 4.0', "OpenAI's terms of use", 'Judge: gpt-4'):
        assert s in text, s
    # a second run: our demo data, a local teacher, nothing evaluated but Vicuna-80 without reasoning
    run2 = example_run(tmp_path/'run2', dataset='demo', metrics={'final_model': 'iter_2', 'vicuna80': {'relative_score': 50.0, 'per_category': {}}})
    cfg = yaml.safe_load((run2/'config.yaml').read_text())
    cfg['models']['gpt'] = {'backend': 'embedded', 'model': 'qwen2.5-coder-0.5b-instruct'}
    (run2/'config.yaml').write_text(yaml.safe_dump(cfg))
    assert card_cli(['--run-dir', str(run2), '--out', str(tmp_path/'card2.md')]) == 0
    t2 = (tmp_path/'card2.md').read_text()
    assert yaml.safe_load(t2.split('---\n')[1])['license'] == 'apache-2.0'
    assert 'Research use only' not in t2 and 'written for lion_nb' in t2
    assert t2.count('*not evaluated*') == 2                                   # win/tie/lose and reasoning
    # never overwrite a README someone else wrote
    (tmp_path/'mine.md').write_text('my own card')
    assert main(['card', '--run-dir', str(run2), '--out', str(tmp_path/'mine.md')]) == 2
    assert (tmp_path/'mine.md').read_text() == 'my own card'


def test_card_for_an_unfinished_run(tmp_path):
    "A run with only a config: the card says what is missing instead of failing."
    run = example_run(tmp_path/'run')
    for p in run.glob('iter_*'): shutil.rmtree(p)
    (run/'manifest.json').unlink()
    assert card_cli(['--run-dir', str(run), '--out', str(tmp_path/'c.md')]) == 0
    t = (tmp_path/'c.md').read_text()
    assert 'No iteration has trained a student yet' in t and 'no `iter_<k>/evaluation/metrics.json`' in t


# ---------------------------------------------------------------- chat

def test_reply_streams_and_keeps_history(tmp_path):
    s = ChatSession(*load_chat_model(tiny_chat_model(tmp_path/'tiny')), max_new_tokens=10)
    pieces = list(s.reply('hello'))
    assert len(pieces) > 1
    list(s.reply('more'))
    assert [m['role'] for m in s.history] == ['user', 'assistant', 'user', 'assistant']
    assert s.history[1]['content'] == ''.join(pieces).strip()


@pytest.mark.skipif(not shutil.which('tmux') and not os.environ.get('CI'), reason='tmux is not installed (CI installs it and never skips)')
def test_terminal_chat_in_tmux(tmp_path):
    "Drive `lion_nb chat` in a real terminal: prompt, streamed reply, /reset, /exit with status 0."
    model = tiny_chat_model(tmp_path/'tiny')
    sock = f'lion_nb_test_{os.getpid()}'
    tmux = ['tmux', '-L', sock]
    cmd = ' '.join(map(shlex.quote, ['env', 'HF_HUB_OFFLINE=1', *CLI, 'chat', '--model', str(model), '--max-new-tokens', '8']))
    subprocess.run(tmux + ['new-session', '-d', '-s', 'chat', '-x', '150', '-y', '40', f'{cmd}; echo EXITED=$?; sleep 60'], check=True)

    def pane() -> str:
        return subprocess.run(tmux + ['capture-pane', '-p', '-t', 'chat'], capture_output=True, text=True).stdout

    def wait_for(pattern: str, timeout: float = 90) -> str:
        t0 = time.time()
        while time.time() - t0 < timeout:
            p = pane()
            if re.search(pattern, p, re.S): return p
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared; the pane shows:\n{pane()}")

    def send(text: str): subprocess.run(tmux + ['send-keys', '-t', 'chat', text, 'Enter'], check=True)
    try:
        wait_for(r'lion_nb chat with tiny\..*you>')                 # (capture-pane drops trailing spaces)
        send('hello lion')
        p = wait_for(r'you> hello lion\nstudent> [a-z]+( [a-z]+)+\s*\nyou>')
        reply = re.search(r'student> (.*)', p).group(1)
        send('/reset'); wait_for(r'\(history cleared\)\nyou>')
        send('/exit'); p = wait_for(r'bye\s+EXITED=0')
        print(p); print('reply:', reply)
    finally:
        subprocess.run(tmux + ['kill-server'], capture_output=True)


def _chromium():
    return shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')


@pytest.mark.skipif(not _chromium() and not os.environ.get('CI'), reason='Chromium is not installed (CI installs it and never skips)')
def test_web_chat_in_headless_chromium(tmp_path):
    "`lion_nb chat --web`: type a question in headless Chromium, see the answer stream in, take a screenshot."
    import websocket
    model = tiny_chat_model(tmp_path/'tiny')
    srv = subprocess.Popen([*CLI, 'chat', '--model', str(model), '--web', '--max-new-tokens', '12'],
                           stdout=subprocess.PIPE, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    browser = None
    try:
        url = re.search(r'(http://127\.0\.0\.1:\d+/)', srv.stdout.readline()).group(1)
        browser = subprocess.Popen([_chromium(), '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
                                    '--remote-debugging-port=0', f'--user-data-dir={tmp_path/"profile"}', 'about:blank'],
                                   stderr=subprocess.PIPE, text=True)
        line = ''
        while 'DevTools listening on' not in line:
            line = browser.stderr.readline()
            assert line, 'Chromium exited before opening DevTools'
        port = re.search(r'ws://127\.0\.0\.1:(\d+)/', line).group(1)
        page = next(t for t in json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list')) if t['type'] == 'page')
        ws = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=30, suppress_origin=True)
        ids = iter(range(1, 10**6))

        def cdp(method, **params):
            i = next(ids); ws.send(json.dumps({'id': i, 'method': method, 'params': params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get('id') == i:
                    assert 'error' not in msg, msg
                    return msg.get('result', {})

        def js(expr):
            return cdp('Runtime.evaluate', expression=expr, returnByValue=True)['result'].get('value')

        def until(expr, timeout=60):
            t0 = time.time()
            while time.time() - t0 < timeout:
                v = js(expr)
                if v: return v
                time.sleep(0.1)
            raise AssertionError(f'{expr} stayed false')

        cdp('Page.navigate', url=url)
        until("document.readyState === 'complete' && !!document.getElementById('q')")
        # record every update of the reply as it streams in: each SSE frame replaces the reply's text node, and a
        # replaced node keeps the text it had, so the mutation records show every step even when frames arrive together
        js("window.updates = []; new MutationObserver((recs) => { for (const rec of recs) if (rec.target.id === 'reply-0')"
           " for (const n of rec.addedNodes) window.updates.push(n.textContent); })"
           ".observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); true")
        js("document.getElementById('q').focus()")
        cdp('Input.insertText', text='Tell me about lions')
        for kind in ('keyDown', 'keyUp'):
            cdp('Input.dispatchKeyEvent', type=kind, key='Enter', code='Enter', windowsVirtualKeyCode=13, text='\r')
        until("document.getElementById('status').textContent === 'done'")
        answer = js("document.getElementById('reply-0').textContent")
        updates = js('window.updates')
        assert js("document.querySelector('.user span').textContent") == 'Tell me about lions'
        assert re.fullmatch(r'[a-z]+( [a-z]+)+', answer.strip()), answer
        assert len({u for u in updates if u}) > 1, updates                  # the answer grew in steps: streamed
        shot = base64.b64decode(cdp('Page.captureScreenshot', format='png')['data'])
        assert shot[:8] == b'\x89PNG\r\n\x1a\n' and len(shot) > 5000
        (tmp_path/'chat.png').write_bytes(shot)
        if os.environ.get('LION_SCREENSHOT_DIR'):
            Path(os.environ['LION_SCREENSHOT_DIR']).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path/'chat.png', Path(os.environ['LION_SCREENSHOT_DIR'])/'chat_web.png')
        ws.close()
    finally:
        if browser:
            browser.terminate(); browser.wait(10)
        srv.terminate(); srv.wait(10)
