"""SFT training under real torchrun: FSDP2 sharding on CPU (gloo, 2 processes), loss mask, packing, resume after a kill."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from lion_nb.core import Instruction, LionError, ModelSpec, TrainConfig, load_config, read_json, read_log, write_jsonl
from lion_nb.train import (IGNORE, build_examples, collate, export_complete, launch_training, latest_checkpoint,
                           make_tiny_llama, mean_nll, plan_steps, prompt_and_response, step_examples, token_loss_sum,
                           run_key, tokenize_example, torchrun_command, toy_sft_records, train_cli)

ROOT = Path(__file__).resolve().parents[1]

ARGS = ['--epochs', '2', '--lr', '3e-3', '--micro-batch', '4', '--effective-batch', '8', '--max-length', '128', '--seed', '7']
CFG = TrainConfig(epochs=2, lr=3e-3, micro_batch=4, effective_batch=8, max_length=128)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A random tiny Llama with a byte-level BPE tokenizer and a chat template, built offline."
    return make_tiny_llama(tmp_path_factory.mktemp('tiny') / 'model')


@pytest.fixture(scope='module')
def tiny_base(tmp_path_factory):
    "The same tiny Llama with a tokenizer that has no chat template, like the paper's LLaMA-7B base model."
    return make_tiny_llama(tmp_path_factory.mktemp('tiny_base') / 'model', chat_template=False)


@pytest.fixture(scope='module')
def sft(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp('data') / 'sft.jsonl', toy_sft_records(64))


@pytest.fixture(scope='module')
def full_run(tiny_base, sft, tmp_path_factory):
    "One uninterrupted 2-process run of the base (no chat template) model through `lion_nb train`, a checkpoint every 2 steps."
    out = tmp_path_factory.mktemp('run') / 'out'
    rc = train_cli(['--data', str(sft), '--model', str(tiny_base), '--out', str(out), '--nproc', '2', '--save-every', '2', *ARGS])
    assert rc == 0
    return out


def test_parameters_are_sharded(full_run):
    shards = json.loads((full_run / 'shards.json').read_text())
    assert shards['world'] == 2 and sum(shards['local']) == shards['total']
    for n in shards['local']:                       # each rank holds about half of the parameters
        assert abs(n / shards['total'] - 0.5) < 0.02, shards


def test_loss_decreases(full_run):
    log = read_log(full_run / 'train_log.jsonl')
    assert [r['step'] for r in log] == list(range(1, len(log) + 1)) and len(log) >= 8
    first, last = log[0]['loss'], sum(r['loss'] for r in log[-2:]) / 2
    assert last < 0.85 * first, (first, last)
    assert log[-1]['lr'] < log[1]['lr']             # the cosine schedule decayed


def test_base_model_trains_and_answers_in_the_paper_prompt(full_run, tiny_base):
    "No chat template: training and the student's HF client both use the Alpaca layout, token for token."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lion_nb.llm import answer_requests, make_client, render_prompt
    model, tok = AutoModelForCausalLM.from_pretrained(full_run / 'model'), AutoTokenizer.from_pretrained(full_run / 'model')
    assert not tok.chat_template and model.config.dtype == torch.bfloat16          # the streamed bf16 export
    item = Instruction(id='q', instruction='Reverse the words of the input.', input='red fox')
    infer = render_prompt(tok, answer_requests([item], role='student', temperature=0.0, max_tokens=6)[0].messages, 'chat')
    rec = {'id': 'q', 'instruction': item.instruction, 'input': item.input, 'output': 'fox red'}
    trained = prompt_and_response(tok, rec, 'chat')[0]
    assert trained == infer and '### Input:\nred fox\n\n### Response:\n' in infer                # the paper's layout
    ex = tokenize_example(tok, rec, 512, 'chat')                                    # and the same token ids
    n_prompt = sum(l == IGNORE for l in ex['labels'])
    assert ex['input_ids'][:n_prompt] == tok(infer, add_special_tokens=True)['input_ids']
    client = make_client(ModelSpec(backend='hf', model=str(full_run / 'model')), role='student', cache_dir=full_run / 'c')
    res = client.run(answer_requests([item], role='student', temperature=0.0, max_tokens=6))
    assert res[0].status == 'done' and res[0].completion_tokens > 0
    held_out = toy_sft_records(8, seed=99)          # the trained model fits unseen records better than the random one
    assert mean_nll(model.float(), tok, held_out)['nll'] < mean_nll(tiny_base, tiny_base, held_out)['nll'] - 0.5
    kept = sorted(p.name for p in (full_run / 'checkpoints').glob('step_*'))
    assert len(kept) == 2 and latest_checkpoint(full_run).name == kept[-1]   # the last two checkpoints are kept


def test_paper_profile_prompt_and_step_count():
    """The paper profile trains and answers in Lion's layout (its PROMPT_DICT, no Alpaca preamble), samples its
    evaluation answers at Lion's 0.7, sends Lion's teacher system prompt and filters as Lion's generator did; it
    takes the paper's 1,219 steps whether or not it packs."""
    from lion_nb.llm import LION_TEACHER_SYSTEM, render_prompt
    cfg = load_config(ROOT / 'configs' / 'paper.yaml')
    assert cfg.model_for('student').prompt_template == 'lion' and cfg.train.template == 'lion'
    assert cfg.eval.temperature == 0.7 and cfg.sampling.teacher_system == LION_TEACHER_SYSTEM
    assert cfg.generation.lion_filter and load_config(ROOT / 'configs' / 'demo.yaml').eval.temperature == 0
    msgs = [{'role': 'user', 'content': 'Sort the numbers.\n\n3 1 2'}]
    assert render_prompt(None, msgs, cfg.train.template) == '### Instruction:\nSort the numbers.\n\n### Input:\n3 1 2\n\n### Response:\n'
    assert cfg.train.device == 'cuda' and cfg.train.batch_unit == 'examples'
    lengths = [40 + (i * 7919) % 600 for i in range(52002)]
    for packing in (True, False):
        c = cfg.train.model_copy(update={'packing': packing})
        p0, p7 = (plan_steps(lengths, c, world=8, rank=r, seed=1, max_length=1024) for r in (0, 7))
        assert len(p0) == len(p7) == 1219, (packing, len(p0))
        assert [len(s) for s in p0] == [len(s) for s in p7]                  # same micro-batches on every rank
    steps = step_examples(lengths, cfg.train, seed=1)
    assert [len(s) for s in steps[:-1]] == [128] * 1218 and sum(map(len, steps)) == 3 * 52002


def test_gpu_expected_but_none_fails_before_launch(tiny, sft, tmp_path):
    "train.device: cuda with no visible GPU fails loudly, in the launcher and in a worker; nothing is written."
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
    code = 'import sys; from lion_nb.train import train_cli; sys.exit(train_cli(sys.argv[1:]))'
    r = subprocess.run([sys.executable, '-c', code, '--data', str(sft), '--model', str(tiny), '--out', str(tmp_path / 'o'),
                        '--device', 'cuda', '--nproc', '2'], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'no GPU is visible' in r.stderr and not (tmp_path / 'o').exists()
    r = subprocess.run([sys.executable, '-c', 'from lion_nb.train import setup_distributed; setup_distributed("cuda")'],
                       env={**env, 'RANK': '0', 'WORLD_SIZE': '1'}, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'no GPU is visible' in r.stderr and 'gloo' not in r.stdout


def test_meta_loading_broadcast_and_streamed_export(sft, tmp_path):
    "Ranks > 0 build on meta and read nothing; after the broadcast (0 steps) the bf16 shards equal the weights."
    from transformers import AutoModelForCausalLM
    src = make_tiny_llama(tmp_path / 'tied', tie=True, chat_template=False)
    cfg = CFG.model_copy(update={'export_shard_gb': 0.0001})                 # about 100 KB: several shards
    out = launch_training(sft, src, tmp_path / 'out', cfg, 2, seed=7, max_steps=0, echo=lambda l: None)
    built = read_json(tmp_path / 'out' / 'shards.json')['built']
    assert [b['read_weights'] for b in built] == [True, False] and all(b['materialised_before_broadcast'] == 0 for b in built)
    index = read_json(out / 'model.safetensors.index.json')
    assert len(set(index['weight_map'].values())) > 1 and export_complete(out, 0)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert got.lm_head.weight is got.model.embed_tokens.weight                # still tied
    for k, v in got.state_dict().items():
        assert torch.equal(v, ref[k].bfloat16().float()), k


def test_loss_mask_chat_template(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    rec = {'id': 'a', 'instruction': 'Sort the numbers.', 'input': '3 1 2', 'output': '1 2 3'}
    prompt, response = prompt_and_response(tok, rec)
    assert prompt == '<|im_start|>user\nSort the numbers.\n\n3 1 2<|im_end|>\n<|im_start|>assistant\n'
    ex = tokenize_example(tok, rec, 512)
    n_prompt = len(tok(prompt, add_special_tokens=False)['input_ids'])
    assert ex['labels'][:n_prompt] == [IGNORE] * n_prompt                 # every prompt token is masked
    assert ex['labels'][n_prompt:] == ex['input_ids'][n_prompt:]          # every response token is learned
    assert tok.decode([t for t, l in zip(ex['input_ids'], ex['labels']) if l != IGNORE]) == '1 2 3<|im_end|>\n'
    # the mask survives collation: in a batch, labelled positions are exactly the response tokens
    b = collate([[ex, ex]], tok.pad_token_id, pad_to=2 * len(ex['input_ids']) + 3)
    assert int((b['labels'] != IGNORE).sum()) == 2 * (len(ex['input_ids']) - n_prompt)
    # the Alpaca template masks its prompt too
    exa = tokenize_example(tok, rec, 512, 'alpaca')
    assert tok.decode([t for t, l in zip(exa['input_ids'], exa['labels']) if l != IGNORE]) == '1 2 3<|im_end|>'


def test_packed_loss_and_grads_equal_per_example(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(tiny), AutoModelForCausalLM.from_pretrained(tiny)
    exs = build_examples(tok, toy_sft_records(4, seed=3), 256)[0]

    def loss_and_grad(rows):
        model.zero_grad()
        total = sum(token_loss_sum(model, collate(r, tok.pad_token_id))[0] for r in rows)
        total.backward()
        return total.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    packed = loss_and_grad([[exs]])                                  # all four in one row
    single = loss_and_grad([[[e]] for e in exs])                     # one at a time
    assert abs(packed[0] - single[0]) < 1e-3 * abs(single[0])
    assert torch.allclose(packed[1], single[1], atol=1e-5, rtol=1e-3)


def descendants(pid: int) -> list[int]:
    "Every live process below `pid` (torchrun starts its workers in sessions of their own)."
    children: dict[int, list[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError: continue
        if fields[0] != 'Z': children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(); tree.append(p); todo += children.get(p, [])
    return tree


def alive(pid: int) -> bool:
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError: return False


def test_kill9_resume_then_export_skipped(full_run, tiny_base, sft, tmp_path):
    "kill -9 of torchrun after step 3 starts: its workers die too; the rerun resumes at step 2 with identical losses."
    out, cfg = tmp_path / 'out', CFG.model_copy(update={'save_every': 2})
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    job = subprocess.Popen(torchrun_command(sft, tiny_base, out, cfg, 2, seed=7, env={}), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    for line in job.stdout:
        if '[train] step 3/' in line:
            workers = descendants(job.pid); os.kill(job.pid, signal.SIGKILL); break
    assert job.wait(60) == -signal.SIGKILL and len(workers) >= 2
    for _ in range(100):                                   # the workers die with their agent (PDEATHSIG)
        if not any(alive(w) for w in workers): break
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)
    assert latest_checkpoint(out).name == 'step_000002' and not (out / 'model').exists()
    lines = []
    launch_training(sft, tiny_base, out, cfg, 2, seed=7, echo=lines.append)
    assert any('resumed from step_000002' in l for l in lines)
    assert not any('[train] step 1/' in l for l in lines)            # the done steps are not redone
    resumed, uninterrupted = read_log(out / 'train_log.jsonl'), read_log(full_run / 'train_log.jsonl')
    assert [r['step'] for r in resumed] == [r['step'] for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted):                           # same data order, same optimizer state
        assert abs(a['loss'] - b['loss']) < 1e-3, (a, b)
    assert export_complete(out / 'model', len(resumed))
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / 'model').iterdir()}
    lines = []
    launch_training(sft, tiny_base, out, cfg, 2, seed=7, echo=lines.append)   # done already: the export is kept
    assert any("this run's finished export (verified): not launching" in l for l in lines), lines
    key = lambda c: run_key(sft, tiny_base, c, seed=7, max_steps=None, nproc=2)
    assert key(cfg) == key(cfg.model_copy(update={'save_every': 5, 'keep': 1}))   # bookkeeping settings: same run
    assert key(cfg) != key(cfg.model_copy(update={'lr': 1e-3}))                   # a setting of the result: not
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (out / 'model').iterdir()}
    shard = next((out / 'model').glob('*.safetensors'))                      # a damaged export is not "done"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert not export_complete(out / 'model', len(resumed))


def test_lora_trains_adapters_and_saves_merged(tiny, sft, tmp_path):
    from safetensors.torch import load_file
    cfg = CFG.model_copy(update={'lora': True, 'lora_r': 4, 'lr': 1e-2})
    model_dir = launch_training(sft, tiny, tmp_path / 'out', cfg, 2, seed=7, max_steps=3, echo=lambda l: None)
    shards = json.loads((tmp_path / 'out' / 'shards.json').read_text())
    assert 0 < shards['trainable'] < 0.3 * shards['total'] and abs(shards['local'][0] / shards['total'] - 0.5) < 0.02
    assert shards['trainable'] == 2048 * 4                                   # train.lora_r reached the workers' model
    base, tuned = load_file(tiny / 'model.safetensors'), load_file(model_dir / 'model.safetensors')
    assert set(tuned) == set(base)                                           # merged: a plain checkpoint, no adapter keys
    assert torch.equal(base['model.embed_tokens.weight'].bfloat16(), tuned['model.embed_tokens.weight'])   # frozen
    q = 'model.layers.0.self_attn.q_proj.weight'                             # the adapters were merged in
    assert not torch.allclose(base[q].bfloat16().float(), tuned[q].float())


# ---------------------------------------------------------------- issue 26: multi-node, gradient sync

def torchrun_2(mode: str, base: Path) -> list[dict]:
    "Run tests/dist_checks.py MODE BASE on 2 gloo processes (real torchrun); each rank's result."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(ROOT/'tests'/'dist_checks.py'), mode, str(base)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((base/f'result_{k}.json').read_text()) for k in range(2)]


def fake_checkpoint(out: Path, step: int):
    d = out/'checkpoints'/f'step_{step:06d}'
    d.mkdir(parents=True)
    (d/'trainer_state.json').write_text(json.dumps({'step': step}))


def test_resume_checkpoint_is_rank0s(tmp_path):
    """Two ranks whose views of checkpoints/ differ (a network filesystem: rank 1 does not see step 2 yet) resume
    from the same checkpoint, rank 0's. Each picking its own latest, as before, they disagreed (the 'own' column)."""
    for s in (1, 2): fake_checkpoint(tmp_path/'rank0', s)
    fake_checkpoint(tmp_path/'rank1', 1)
    r0, r1 = torchrun_2('resume', tmp_path)
    assert (r0['own'], r1['own']) == ('step_000002', 'step_000001')     # what each rank alone would pick
    assert r0['agreed'] == r1['agreed'] == 'step_000002'


def test_shared_folder_check(tmp_path):
    "A run on several nodes needs one folder all of them see: two ranks with their own folders fail, clearly, on both."
    ok = torchrun_2('shared', tmp_path/'a')
    assert all(r['ok'] for r in ok) and ok[0]['left'] == []             # the probe is removed again
    bad = torchrun_2('private', tmp_path/'b')
    assert not any(r['ok'] for r in bad)
    assert all('not on a filesystem that every node shares: rank(s) [1]' in r['error'] for r in bad)


def test_multi_node_only_when_configured_and_through_srun(tiny, sft, tmp_path):
    """Inside a 2-node SLURM allocation, `nnodes` unset: one standalone torchrun (it used to take nnodes=2 from
    SLURM_NNODES and wait at a rendezvous no second node joined). `nnodes: 2`: srun starts one torchrun per node."""
    from lion_nb.train import torchrun_command
    slurm = {'SLURM_JOB_ID': '7', 'SLURM_NNODES': '2', 'SLURM_NODEID': '0', 'SLURM_JOB_NODELIST': 'gpu[01-02]'}
    one = torchrun_command(sft, tiny, tmp_path, TrainConfig(), 8, env=slurm)
    assert one[0] == sys.executable and '--standalone' in one and 'srun' not in one and '--nnodes' not in one
    two = torchrun_command(sft, tiny, tmp_path, TrainConfig(nnodes=2), 8, env=slurm)
    assert two[:two.index(sys.executable)] == ['srun', '--nodes', '2', '--ntasks', '2', '--ntasks-per-node', '1',
                                                '--kill-on-bad-exit=1', '--export=ALL']
    tr = two[two.index(sys.executable):]
    assert tr[tr.index('--nnodes') + 1] == '2' and tr[tr.index('--rdzv_endpoint') + 1] == 'gpu01:29500'
    assert '--node_rank' not in tr and '--standalone' not in tr          # c10d ranks the nodes: one command for all
    with pytest.raises(LionError, match='holds 1 node'):
        torchrun_command(sft, tiny, tmp_path, TrainConfig(nnodes=2), 8, env={**slurm, 'SLURM_NNODES': '1'})


@pytest.mark.slow
def test_gradient_sync_memory_on_and_off():
    """bench/grad_sync_memory.py on 2 gloo processes: with sync on each micro-batch a rank holds its shard of the
    gradient (half of it); with sync off, FSDP2 holds the whole unsharded fp32 gradient until the last one."""
    args = ['--hidden', '128', '--layers', '2', '--vocab', '512', '--seq', '32', '--micro', '3']
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'grad_sync_memory.py'), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[:3000] + '\n...\n' + r.stderr[-3000:]   # a rank's own error, then torchrun's
    fig = json.loads(r.stdout.strip().splitlines()[-1])
    full = fig['unsharded_fp32_grad_mib']
    assert abs(fig['held_mib']['off'] - full) <= 0.2 and abs(fig['held_mib']['on'] - full / 2) <= 0.2
    assert fig['after_step_mib'] == {'on': fig['held_mib']['on'], 'off': fig['held_mib']['on']}   # sharded after the step
