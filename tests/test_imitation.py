"""The imitation stage end to end: teacher answers from a real local OpenAI-compatible server (one fails),
SFT data without the failed one, a real torchrun training run of a tiny Llama, held-out NLL before > after,
the done marker, and a re-run that asks the teacher nothing."""
import os, re, sys
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).parent))
from lion_nb.testing import last_user_text, serve  # noqa: E402

from lion_nb.core import Instruction, RunDir, parse_config, read_log, write_jsonl  # noqa: E402
from lion_nb.imitation import run_imitation, starting_student  # noqa: E402
from lion_nb.train import make_tiny_llama, read_sft, toy_sft_records  # noqa: E402


def reverse_words(body):
    "The 'teacher': reverses the words it is asked about (the toy task), so the student has something to learn."
    text = last_user_text(body)
    words = text.split('\n\n', 1)[1] if '\n\n' in text else text.split(':', 1)[-1]
    return ' '.join(reversed(words.split()))


def config(base_url, tiny):
    return parse_config({
        'seed': 3,
        'models': {'teacher': {'backend': 'openai', 'model': 'fake-teacher', 'base_url': base_url, 'max_retries': 0, 'concurrency': 4},
                   'student': {'backend': 'hf', 'model': str(tiny)}},
        'roles': {r: ('student' if r == 'student' else 'teacher') for r in ('teacher', 'referee', 'generator', 'judge', 'student')},
        'train': {'epochs': 4, 'lr': 3e-3, 'micro_batch': 4, 'effective_batch': 8, 'max_length': 128, 'nproc': 1,
                  'heldout_fraction': 0.2}})


def test_run_imitation(tmp_path):
    tiny = make_tiny_llama(tmp_path / 'tiny')
    pool = [Instruction(id=r['id'], instruction=r['instruction'], input=r['input']) for r in toy_sft_records(40)]
    run = RunDir(tmp_path / 'run')
    write_jsonl(run.pool(1, 'train'), pool)
    fail_id = 'toy-5'
    fail_text = pool[5].input or pool[5].instruction
    fail = lambda body, n, seen: '500' if fail_text in last_user_text(body) else None
    with serve(reverse_words, fault_fn=fail) as srv:
        cfg = config(srv.base_url, tiny)
        lines = []
        s = run_imitation(cfg, run, 1, echo=lines.append)
        asked = srv.n_chat
        again = run_imitation(cfg, run, 1)
        assert srv.n_chat == asked                                    # done: nothing asked again

    assert (s['answers'], s['usable'], s['failed']) == (40, 39, 1)    # the failed answer is counted...
    sft, held = read_sft(run.stage_dir(1, 'imitation') / 'sft.jsonl'), read_sft(run.stage_dir(1, 'imitation') / 'heldout.jsonl')
    ids = {r['id'] for r in sft} | {r['id'] for r in held}
    assert fail_id not in ids and len(ids) == 39 and len(held) == 8   # ...and left out; 20% held out
    assert all(r['input'] == p.input for r in sft for p in pool if p.id == r['id'])
    ans = {a['id']: a for a in read_log(run.stage_dir(1, 'imitation') / 'teacher_answers.jsonl')}
    assert ans[fail_id]['status'] == 'failed' and ans['toy-1']['output'] == ' '.join(reversed(pool[1].input.split()))
    assert any('[train] step' in l for l in lines)                    # the training log was streamed
    assert s['nll_after'] < s['nll_before'] - 0.5, s                   # the distillation signal
    assert s['train_tokens_per_s'] > 0 and again == s
    assert run.is_done(1, 'imitation') and (run.stage_dir(1, 'imitation') / 'model' / 'config.json').exists()
    assert not (run.stage_dir(1, 'imitation') / 'checkpoints').exists()
    # iteration 2 starts from iteration 1's model
    path, origin = starting_student(cfg, run, 2)
    assert path == run.student(1) and origin == 'iter_1/imitation/model'
    assert starting_student(cfg, run, 1)[0] == tiny
