"""SFT training under real torchrun: FSDP2 sharding on CPU (gloo, 2 processes), loss mask, packing, resume after a kill."""
import json, os
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from lion_nb.core import TrainConfig, read_log, write_jsonl
from lion_nb.train import (IGNORE, build_examples, collate, launch_training, latest_checkpoint, make_tiny_llama,
                           mean_nll, prompt_and_response, token_loss_sum, tokenize_example, toy_sft_records, train_cli)

ARGS = ['--epochs', '2', '--lr', '3e-3', '--micro-batch', '4', '--effective-batch', '8', '--max-length', '128', '--seed', '7']
CFG = TrainConfig(epochs=2, lr=3e-3, micro_batch=4, effective_batch=8, max_length=128)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A random tiny Llama with a byte-level BPE tokenizer and a chat template, built offline."
    return make_tiny_llama(tmp_path_factory.mktemp('tiny') / 'model')


@pytest.fixture(scope='module')
def sft(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp('data') / 'sft.jsonl', toy_sft_records(64))


@pytest.fixture(scope='module')
def full_run(tiny, sft, tmp_path_factory):
    "One uninterrupted 2-process run through `lion_nb train` (the CLI), saving a checkpoint every 2 steps."
    out = tmp_path_factory.mktemp('run') / 'out'
    rc = train_cli(['--data', str(sft), '--model', str(tiny), '--out', str(out), '--nproc', '2', '--save-every', '2', *ARGS])
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


def test_saved_model_reloads_and_generates(full_run, tiny, sft):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(full_run / 'model'), AutoTokenizer.from_pretrained(full_run / 'model')
    assert tok.chat_template
    ids = tok.apply_chat_template([{'role': 'user', 'content': 'Reverse these words: red fox'}], add_generation_prompt=True,
                                  return_tensors='pt', return_dict=True)
    gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > ids['input_ids'].shape[1]
    held_out = toy_sft_records(8, seed=99)          # the trained model fits unseen records better than the random one
    assert mean_nll(model, tok, held_out)['nll'] < mean_nll(tiny, tiny, held_out)['nll'] - 0.5
    kept = sorted(p.name for p in (full_run / 'checkpoints').glob('step_*'))
    assert len(kept) == 2 and latest_checkpoint(full_run).name == kept[-1]   # the last two checkpoints are kept


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


def test_resume_after_kill(full_run, tiny, sft, tmp_path):
    out = tmp_path / 'out'

    class Killed(Exception): pass

    def kill_at_step_3(line):                      # step 2's checkpoint is complete before step 3 starts
        if '[train] step 3/' in line: raise Killed

    with pytest.raises(Killed):
        launch_training(sft, tiny, out, CFG, 2, seed=7, save_every=2, echo=kill_at_step_3)
    assert latest_checkpoint(out).name == 'step_000002' and not (out / 'model').exists()
    lines = []
    launch_training(sft, tiny, out, CFG, 2, seed=7, save_every=2, echo=lines.append)
    assert any('resumed from step_000002' in l for l in lines)
    assert not any('[train] step 1/' in l for l in lines)            # the done steps are not redone
    resumed, uninterrupted = read_log(out / 'train_log.jsonl'), read_log(full_run / 'train_log.jsonl')
    assert [r['step'] for r in resumed] == [r['step'] for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted):                           # same data order, same optimizer state
        assert abs(a['loss'] - b['loss']) < 1e-3, (a, b)
    assert (out / 'model' / 'config.json').exists()


def test_lora_trains_adapters_and_saves_merged(tiny, sft, tmp_path):
    from safetensors.torch import load_file
    cfg = CFG.model_copy(update={'lora': True, 'lr': 1e-2})
    model_dir = launch_training(sft, tiny, tmp_path / 'out', cfg, 2, seed=7, max_steps=3, lora_r=4, echo=lambda l: None)
    shards = json.loads((tmp_path / 'out' / 'shards.json').read_text())
    assert 0 < shards['trainable'] < 0.3 * shards['total'] and abs(shards['local'][0] / shards['total'] - 0.5) < 0.02
    base, tuned = load_file(tiny / 'model.safetensors'), load_file(model_dir / 'model.safetensors')
    assert set(tuned) == set(base)                                           # merged: a plain checkpoint, no adapter keys
    assert torch.equal(base['model.embed_tokens.weight'], tuned['model.embed_tokens.weight'])   # frozen
    assert not torch.allclose(base['model.layers.0.self_attn.q_proj.weight'], tuned['model.layers.0.self_attn.q_proj.weight'])
