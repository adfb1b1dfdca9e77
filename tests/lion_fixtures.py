"""A whole Lion run in miniature, for end-to-end, resume and fault tests.

Every remote role (teacher, referee, generator, judge) is played by the local OpenAI-compatible server in
`lion_nb.testing`, scripted by `lion_reply`, which recognises each role by its prompt and answers the way
a well-behaved model would. The student is a tiny random Llama saved offline. So the real loop, real
papermill, real torchrun and the real `openai` client all run, in minutes, with outcomes we can predict:

- the teacher's answers begin "Answer to:" and name the question;
- the referee prefers the teacher's answer by 6 points on instructions whose hash is even (they are hard)
  and scores both answers alike on the others (easy), whatever the order;
- the generator makes a new, distinct instruction from each seed;
- judges prefer the teacher-like answer.
"""
from __future__ import annotations
import hashlib, re, sys, time
from pathlib import Path

import yaml

from lion_nb.testing import last_user_text

ROOT = Path(__file__).resolve().parents[1]
LION = [sys.executable, '-c', 'import sys; from lion_nb.cli import main; sys.exit(main())']   # the console script, in this Python
WORDS = ('amber basil cedar delta ember fjord garnet harbor indigo juniper kelp lagoon meadow nectar orchid '
         'pepper quartz river saffron tundra umber velvet willow xenon yarrow zephyr').split()

def _h(text: str) -> int: return int(hashlib.sha256(text.encode()).hexdigest(), 16)

def is_hard(instruction_text: str) -> bool:
    "The scripted referee's ground truth: which requests it finds hard."
    return _h(instruction_text.strip()) % 2 == 0

def _between(text: str, start: str, end: str) -> str:
    m = re.search(re.escape(start) + r'(.*?)' + re.escape(end), text, re.S)
    return m.group(1).strip() if m else ''

def _referee(user: str) -> str:
    request = _between(user, '<request>', '</request>')
    a1 = _between(user, '<assistant_1_answer>', '</assistant_1_answer>')
    teacher_first = a1.startswith('Answer to:')
    t, s = (9, 3) if is_hard(request) else (7, 7)
    first, second = (t, s) if teacher_first else (s, t)
    return f"Both answers address the request; one is more complete.\nAssistant 1: {first}\nAssistant 2: {second}"

def _generator(user: str) -> str:
    h = _h(user)
    verb = ('List', 'Sort', 'Describe', 'Rhyme', 'Count')[h % 5]
    words = ' '.join(WORDS[(h >> (5 * i + 3)) % len(WORDS)] for i in range(9))
    return f"### New instruction\n{verb} {words}.\n### New input\nnone"

def _judge_scores(user: str) -> str:
    first = _between(user, '[Answer 1]', '[End of Answer 1]') or _between(user, '[Assistant 1]', '[End of Assistant 1]')
    a, b = (8, 5) if first.startswith('Answer to:') else (5, 8)
    return f"The first answer is {'better' if a > b else 'weaker'}.\nScores: {a} {b}"

def _judge_pair(user: str) -> str:
    first = _between(user, '[Response A]', '[End of Response A]')
    return 'Response A is more helpful. [[A]]' if first.startswith('Answer to:') else 'Response B is more helpful. [[B]]'

def lion_reply(body: dict) -> str:
    "What the scripted teacher, referee, generator or judge says to a chat request."
    msgs = body.get('messages') or []
    system = msgs[0]['content'] if msgs and msgs[0].get('role') == 'system' else ''
    user = last_user_text(body)
    if 'impartial referee' in system:
        return _referee(user if '<request>' in user else next(m['content'] for m in msgs if m['role'] == 'user'))
    if system.startswith('You write instructions'): return _generator(user)
    if 'helpful, honest and harmless' in system: return _judge_pair(user)
    if 'judge' in system: return _judge_scores(user)
    return f"Answer to: {user[:160]}"

def tiny_student(folder) -> Path:
    "A tiny random Llama with a chat template, saved offline (built once per folder)."
    from lion_nb.train import make_tiny_llama
    folder = Path(folder)
    return folder if (folder/'config.json').exists() else make_tiny_llama(folder)

def tiny_config(path, base_url: str, student: Path, **over) -> Path:
    "A demo-shaped configuration: all remote roles at `base_url`, the tiny student, small sizes."
    remote = dict(backend='openai', model='scripted', base_url=base_url, concurrency=8, max_retries=6, timeout_s=20)
    cfg = dict(name='tiny', seed=0,
               models={'remote': remote, 'student': dict(backend='hf', model=str(student), concurrency=8)},
               roles=dict(teacher='remote', referee='remote', generator='remote', judge='remote', student='student'),
               pools=dict(dataset='demo', train_size=6, cache_size=10, reserve_size=4),
               loop=dict(iterations=1, n_new=4),     # 1 round, then the final imitation: 2 trained students
               sampling=dict(max_new_tokens=64, referee_max_tokens=64, repair_retries=1),
               train=dict(epochs=1, lr=1e-3, max_length=128, effective_batch=4, micro_batch=2, nproc=1),
               eval=dict(sets=['demo'], samples={'demo': 4}, max_new_tokens=24))
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Path(path)


def wait_until(cond, timeout: float = 30.0, proc=None):
    """Poll `cond` every 20 ms until it holds; fail on `timeout` seconds, or when `proc` ends first (with the end
    of whatever output it piped: stderr, else stdout, bytes or text)."""
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            out = (proc.stderr or proc.stdout).read() if (proc.stderr or proc.stdout) else ''
            out = out.decode(errors='replace') if isinstance(out, bytes) else out
            raise AssertionError(f'process ended early ({proc.returncode}): {out[-3000:]}')
        if time.monotonic() - t0 > timeout: raise AssertionError('timed out waiting')
        time.sleep(0.02)
