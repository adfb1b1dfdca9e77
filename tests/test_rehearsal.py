"""The paper rehearsal (bench/paper_rehearsal.py) scaled down: configs/paper.yaml against the local stand-in server.

The real paper profile runs end to end (Batch API on, a student without a chat template, the evaluation sets
sampled from $LION_DATA_DIR) at 1% of its size, for one round and the final imitation, with one training
process: the server's request count must agree with `lion_nb run --dry-run` within 5%, and the same command
run again must send nothing.
"""
import json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.slow          # about 3.5 minutes: `make test-slow` (CI runs it after `make test`)
def test_scaled_rehearsal_matches_the_dry_run_and_resends_nothing(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'paper_rehearsal.py'), '--scale', '0.01', '--iterations', '1',
                        '--nproc', '1', '--work', str(tmp_path/'rehearsal')], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['requests'] > 1000 and abs(res['requests'] / res['dry_run_calls'] - 1) <= 0.05, res
    assert res['second_run_requests'] == 0
    # the stand-in answers as OpenAI does today: nothing refused for its shape or model, no empty answer kept (issue 25)
    assert res['today'] and res['refused_requests'] == {} and res['empty_answers'] == 0, res['refused_requests']
    assert res['batches'] >= 6                                   # every API stage went through the Batch API
    stages = [(s['iteration'], s['stage']) for s in res['stages']]
    assert stages == [(1, 'pools'), (1, 'imitation'), (1, 'discrimination'), (1, 'generation'), (1, 'evaluation'),
                      (2, 'imitation'), (2, 'evaluation')]
    cfg = (tmp_path/'rehearsal'/'run'/'config.yaml').read_text()
    assert 'chat_template' not in (tmp_path/'rehearsal'/'student'/'tokenizer_config.json').read_text()
    assert 'batch_api: true' in cfg


@pytest.mark.slow          # about 4 minutes: `make test-slow`
def test_scaled_rehearsal_batches_go_in_waves_and_resume_after_a_kill_between_waves(tmp_path):
    """The same rehearsal with the stand-in's Batch API queue capped (OpenAI's enqueued-token limit, issue 25) low
    enough that the first teacher pass needs at least three waves: every wave stays under the cap, the queue refuses
    nothing, and a run killed (SIGKILL) between two waves resumes without submitting any batch twice; the requests
    of the killed and the resumed run together still agree with the dry run, and a third run sends nothing."""
    limit = 4_000          # input tokens; the 1% teacher pass over 520 instructions is about 17,000 of them
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'paper_rehearsal.py'), '--scale', '0.01', '--iterations', '1',
                        '--nproc', '1', '--work', str(tmp_path/'rehearsal'), '--batch-queue-tokens', str(limit),
                        '--kill-between-waves'], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['killed_run'] and res['killed_run']['rc'] == -9 and res['killed_run']['batches'] >= 1
    assert res['jobs_submitted_twice'] == [] and res['queue_refused'] == 0
    assert res['today'] and res['refused_requests'] == {} and res['empty_answers'] == 0
    assert max(res['queue_peak'].values()) <= limit
    assert max(s['min_waves'] for s in res['stages']) >= 3
    assert abs(res['requests'] / res['dry_run_calls'] - 1) <= 0.05 and res['second_run_requests'] == 0
