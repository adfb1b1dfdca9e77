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
    assert res['batches'] >= 6                                   # every API stage went through the Batch API
    stages = [(s['iteration'], s['stage']) for s in res['stages']]
    assert stages == [(1, 'pools'), (1, 'imitation'), (1, 'discrimination'), (1, 'generation'), (1, 'evaluation'),
                      (2, 'imitation'), (2, 'evaluation')]
    cfg = (tmp_path/'rehearsal'/'run'/'config.yaml').read_text()
    assert 'chat_template' not in (tmp_path/'rehearsal'/'student'/'tokenizer_config.json').read_text()
    assert 'batch_api: true' in cfg
