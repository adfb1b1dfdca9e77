"""The `lion_nb` console script, run as a real subprocess."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LION = str(Path(sys.executable).parent/'lion_nb')

def lion(*args, **kw):
    return subprocess.run([LION, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)

def test_help_lists_installed_commands():
    r = lion('--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: lion_nb')
    for cmd in ('run', 'demo'): assert f'\n  {cmd} ' in r.stdout

def test_unknown_command_exits_2():
    r = lion('frobnicate')
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr

def test_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path/'bad.yaml'
    cfg.write_text((ROOT/'configs'/'demo.yaml').read_text().replace('  iterations: 2', '  iterations: 2\n  iteratons: 3'))
    r = lion('run', '--config', str(cfg), '--dry-run')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert f"{cfg}: field 'loop.iteratons': unknown field" in r.stderr

def test_paper_dry_run_estimates_cost():
    r = lion('run', '--config', 'configs/paper.yaml', '--dry-run')
    assert r.returncode == 0, r.stderr
    total = [l for l in r.stdout.splitlines() if l.startswith('total')][0].split()
    calls, cost = int(total[1].replace(',', '')), float(total[-1].replace(',', ''))
    assert 200_000 < calls < 500_000 and 100 < cost < 2_000   # the paper: ~360K calls, ~$500
