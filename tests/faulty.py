"""Tools for the reliability tests (tests/test_reliability.py): a fault plan for `lion_nb.testing`, a scripted model
that also plays a distinct student, kill -9 / resume driving, and checks that files are whole.

Whether a request is faulted depends only on its request key and on how many times the server has seen that key
before (so a retried request draws again: a transient fault); the faults given go through every kind in turn, so
a few dozen requests see them all. A small share of keys is "doomed": every attempt fails, so the stage must end
with failed records that carry a reason.
"""
from __future__ import annotations
import hashlib, json, os, re, signal, sqlite3, subprocess, threading, time
from collections import Counter
from pathlib import Path
from typing import Optional

from lion_nb.testing import last_user_text, request_key
from lion_fixtures import LION, ROOT, lion_reply  # noqa: F401 (LION: imported from here by test_reliability)

FAULT_MIX = ('429', '500', '503', 'reset', 'hang', 'length', 'garbled', 'empty', 'badjson')
DOOMED_FAULTS = ('500', '503', 'reset')        # faults that make a request fail on every attempt ('empty' is an
                                                # answer: an empty reply that ended normally is scored, not failed)
NO_SCORES = "Both answers address the request. I would rather not put numbers on them."


def h(*parts) -> int:
    "A stable integer hash of `parts`."
    return int(hashlib.sha256(repr(parts).encode()).hexdigest(), 16)


class FaultPlan:
    "A `fault_fn` for FakeOpenAI: `rate` of all attempts get a fault from FAULT_MIX; doomed requests always fail."
    def __init__(self, rate: float = 0.2, doomed: float = 0.04, seed: int = 0, mix=FAULT_MIX, doom=None):
        self.rate, self.doomed, self.seed, self.mix, self.doom = rate, doomed, seed, mix, doom
        self.bodies: dict[str, dict] = {}      # server request key -> the request body (to map onto client cache keys)
        self.decided = Counter()               # transient faults given, per kind (None: attempts not faulted)
        self.doomed_attempts = 0
        self.lock = threading.Lock()           # the server calls us from one thread per request

    def is_doomed(self, body: dict) -> bool:
        "Every attempt of this request fails: a `doom(body)` pick of the test's, or a `doomed` share of all keys."
        return bool(self.doom and self.doom(body)) or h(self.seed, 'doomed', request_key(body)) % 10_000 < self.doomed * 10_000

    def __call__(self, body: dict, n: int, seen: int) -> Optional[str]:
        key = request_key(body); self.bodies[key] = body
        with self.lock:
            if self.is_doomed(body):
                self.doomed_attempts += 1; return DOOMED_FAULTS[h(self.seed, key) % len(DOOMED_FAULTS)]
            faulted = h(self.seed, key, seen) % 10_000 < self.rate * 10_000
            f = self.mix[sum(self.decided[m] for m in self.mix) % len(self.mix)] if faulted else None   # each kind in turn
            self.decided[f] += 1
            return f


class Recorder:
    "A `fault_fn` that faults nothing and remembers every request body (for the kill tests' bookkeeping)."
    def __init__(self): self.bodies: dict[str, dict] = {}
    def __call__(self, body, n, seen): self.bodies[request_key(body)] = body; return None


def is_student(body: dict) -> bool:
    "The student's requests: a bare user message at temperature 0 (the teacher samples at 0.7)."
    msgs = body.get('messages') or []
    return len(msgs) == 1 and msgs[0].get('role') == 'user' and not body.get('temperature')


def scripted_reply(body: dict) -> str:
    """`lion_reply`, plus a student that answers differently from the teacher (so the scripted referee can tell
    them apart) and a generator whose new instruction depends on the request's sampling seed too."""
    msgs = body.get('messages') or []
    system = msgs[0]['content'] if msgs and msgs[0].get('role') == 'system' else ''
    if is_student(body): return f"Student guess: {last_user_text(body)[:40]}"
    if system.startswith('You write instructions'):
        return lion_reply({**body, 'messages': msgs[:-1] + [{'role': 'user', 'content': f"{last_user_text(body)} #{body.get('seed')}"}]})
    return lion_reply(body)


def referee_request(body: dict) -> str:
    "The instruction a referee request is about ('' for other requests)."
    for m in body.get('messages') or []:
        if m.get('role') == 'user' and '<request>' in (m.get('content') or ''):
            return re.search(r'<request>(.*?)</request>', m['content'], re.S).group(1).strip()
    return ''


def reply_without_scores(share_pairs: float = 0.2, share_requests: float = 0.1, seed: int = 0):
    """A reply function whose referee sometimes gives no scores: always for `share_pairs` of the instructions
    (repairs do not help: those items end unscored), and for `share_requests` of the other referee requests."""
    def reply(body: dict) -> str:
        req = referee_request(body)
        if req and (h(seed, 'pair', req) % 1000 < share_pairs * 1000 or h(seed, 'req', request_key(body)) % 1000 < share_requests * 1000):
            return NO_SCORES
        return scripted_reply(body)
    reply.unscorable = lambda text: h(seed, 'pair', text) % 1000 < share_pairs * 1000
    return reply


# ---------------------------------------------------------------- caches, files, hashes

def cache_keys(run_dir) -> set[str]:
    "The keys of the responses in a run's LLM cache (each is a finished request)."
    db = Path(run_dir)/'cache'/'llm_cache.sqlite'
    if not db.exists(): return set()
    with sqlite3.connect(db, timeout=30) as c: return {k for (k,) in c.execute('SELECT key FROM responses')}


def tree_hash(root) -> dict[str, str]:
    "SHA256 of every file below `root`, by relative path (to show a failed command changed nothing)."
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


APPEND_LOGS = ('usage.jsonl', 'teacher_answers.jsonl', 'answers_teacher.jsonl', 'answers_student.jsonl', 'reviews.jsonl',
               'referee_calls.jsonl', 'answers.jsonl', 'probe_reviews.jsonl', 'probe_calls.jsonl')


def check_files_whole(root, allow_torn_logs: bool = False) -> list[str]:
    """Problems with the files below `root`: a JSON file that does not parse, a JSONL line that does not parse.
    With `allow_torn_logs`, an append-only log may end in one partial line (a kill mid-append; the next open repairs it)."""
    problems = []
    for p in sorted(Path(root).rglob('*')):
        if not p.is_file() or p.name.endswith('.tmp'): continue
        if p.suffix == '.json':
            try: json.loads(p.read_text(encoding='utf-8'))
            except Exception as e: problems.append(f"{p}: {e}")
        elif p.suffix == '.jsonl':
            data = p.read_bytes()
            lines = data.split(b'\n')
            tail = lines.pop()                       # b'' when the file ends with a newline
            if tail and not (allow_torn_logs and p.name in APPEND_LOGS): problems.append(f"{p}: last line has no newline ({tail[:60]!r})")
            for i, line in enumerate(lines, 1):
                if not line.strip(): continue
                try: json.loads(line)
                except Exception as e: problems.append(f"{p}:{i}: {e}")
        elif p.suffix == '.sqlite':
            with sqlite3.connect(p, timeout=30) as c:
                ok = c.execute('PRAGMA integrity_check').fetchone()[0]
            if ok != 'ok': problems.append(f"{p}: {ok}")
    return problems


def leftover_temps(root) -> list[Path]:
    "Temporary files of atomic writes that a kill left behind (harmless: never read, never renamed into place)."
    return [p for p in Path(root).rglob('.*.tmp')]


# ---------------------------------------------------------------- kill -9 and resume

def kill_and_resume(cmd, run_dir, srv, rng, kills: int, expected: int, *, env=None, settle_s: float = 0.15,
                    timeout_s: float = 120) -> list[dict]:
    """Run `cmd` (a stage, in a subprocess) and kill it with SIGKILL `kills` times, each time after the server has
    received a random number of its requests (spread so that the kills fall all over the `expected` requests of the
    stage) plus a random pause (so requests are often in flight), then run it once more to the end. Returns one entry per run: whether it was killed, its exit
    code and output, the cache keys before and after it, and the request keys the server received during it.
    (The trigger counts requests *received*, not answered: a killed run's requests still in flight are answered
    after it died, and must not trigger the next kill.)"""
    runs = []
    for i in range(kills + 1):
        before = cache_keys(run_dir)
        counts0 = Counter(srv.counts)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                             start_new_session=True)
        killed = False
        if i < kills:
            remaining = max(1, expected - len(before))                   # requests this run still has to send
            share = max(1, remaining // (kills - i + 1))                    # spread the kills over what is left
            target, deadline = srv.n_chat + rng.randint(1, min(2 * share, max(1, remaining - 1))), time.monotonic() + timeout_s
            while srv.n_chat < target and p.poll() is None and time.monotonic() < deadline: time.sleep(0.005)
            time.sleep(rng.uniform(0, settle_s))
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL); killed = True
        out, _ = p.communicate(timeout=timeout_s)
        sent = Counter({k: n for k, n in (Counter(srv.counts) - counts0).items() if n})
        runs.append({'killed': killed, 'rc': p.returncode, 'out': out, 'before': before, 'after': cache_keys(run_dir), 'sent': sent})
        if not killed: break
    return runs
