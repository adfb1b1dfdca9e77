"""A real, local, OpenAI-compatible HTTP server for tests and benchmarks (a stand-in for paid remote APIs).

It speaks real HTTP on 127.0.0.1 (a free port), so the real `openai` client talks to it exactly as it would
to a provider. It implements:

    POST /v1/chat/completions      replies from a function of the request, with `usage`
    POST /v1/completions           the same for a `prompt` (the reply function sees it as the last user message)
    GET  /v1/models
    POST /v1/files                 multipart upload (purpose 'batch'); GET /v1/files/{id}[/content]
    POST /v1/batches               GET /v1/batches[/{id}]; POST /v1/batches/{id}/cancel
    GET  /_stats                   the counters below, as JSON (for a server in another process)

Scripting (all attributes of `FakeOpenAI`, changeable while it runs):

    reply(body) -> text | (text, finish_reason)     what the "model" says (default: echoes the last user message);
                | (text, finish_reason, alternatives)  with `logprobs: true` in the request, `choices[0].logprobs.content`
                                                     lists the reply's tokens (digits one per token), each certain,
                                                     except the n-th digit token when `alternatives[n]` gives its
                                                     `top_logprobs` as {token: probability}
    latency_s                                        sleep before answering each chat request
    schedule = {n: fault}                            fault for the n-th chat request received (1-based)
    fault_rate = {fault: p}                          each request gets `fault` with probability p (seeded RNG)
    fault_fn(body, n, key_seen) -> fault | None      anything else (key_seen: earlier requests with this key)
    rpm, window_s                                    an enforced rate limit: 429 + Retry-After when exceeded
    batch_polls                                      retrieves a batch answers 'in_progress' before it completes
    batch_fail_ids                                   custom_ids that go to the batch's error file
    batch_gate                                       None: batches end after `batch_polls` polls; else the set of
                                                     batch numbers (1-based, in creation order) allowed to end
    batch_max_requests, batch_max_file_bytes         OpenAI's limits (50,000 requests; 200 MB per batch input file):
                                                     a bigger upload gets HTTP 400, a batch with more lines fails
                                                     validation (status 'failed', errors listed)
    upload_latency_s                                 sleep after counting an upload, before answering it
    api_key                                          when set, requests without `Authorization: Bearer <it>` get 401
    models_root                                      when set, /v1/models lists it as the model's `root` (as vLLM
                                                     lists the checkpoint folder it serves)

Faults: '429' (with Retry-After: `retry_after_s`, and retry-after-ms when `retry_after_ms` is set),
'500', '503', 'reset' (connection dropped with a TCP reset, no response), 'hang' (no response for
`hang_s` seconds; use it to exercise client timeouts), 'length' (finish_reason 'length', text cut),
'garbled' (non-JSON junk text), 'empty' (empty content), 'badjson' (HTTP 200 with a broken JSON body).

Counters: `counts` (Counter of chat requests received per request key, faulted ones included),
`served` (per key, answered with 200), `faults` (Counter per fault), `rate_limited`, `n_chat`,
`paths` (Counter per "METHOD path"), `auth` (Counter of Authorization headers), `batches_created`, `files_uploaded`, `batch_counts` (per key, lines
answered inside batches). `request_key(body)` is the SHA256 of model + messages + every other parameter.

Use:
    from openai_server import serve
    with serve(latency_s=0.1, schedule={1: '429'}) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key='x')
        ...
        assert srv.counts[request_key(body)] == 2

or the `openai_server` pytest fixture (import it into a test module), or from a shell / another process:
    python tests/openai_server.py --latency-s 0.3 --rpm 600      # prints "READY <base_url>", serves until killed
"""
from __future__ import annotations
import argparse, email.parser, email.policy, hashlib, json, math, random, re, socket, struct, sys, threading, time, uuid
from collections import Counter, deque
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

FAULTS = ('429', '500', '503', 'reset', 'hang', 'length', 'garbled', 'empty', 'badjson')


def request_key(body: dict) -> str:
    "SHA256 of a chat request's model, messages and every other parameter (stream flags aside)."
    b = {k: v for k, v in body.items() if k not in ('stream', 'stream_options')}
    return hashlib.sha256(json.dumps(b, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode()).hexdigest()


def last_user_text(body: dict) -> str:
    "The text of the last user message of a chat request."
    for m in reversed(body.get('messages') or []):
        if m.get('role') == 'user':
            c = m.get('content') or ''
            return c if isinstance(c, str) else ' '.join(p.get('text', '') for p in c if isinstance(p, dict))
    return ''


def default_reply(body: dict) -> str:
    "A deterministic reply that names the question (so tests can check which answer went where)."
    return f"Answer to: {last_user_text(body)[:200]}"


def n_tokens(text: str) -> int:
    "The server's token count: one token per 4 characters, at least one."
    return max(1, math.ceil(len(text)/4))


TOKEN = re.compile(r'\d|\n| ?[^\d\n ]+| ')

def token_logprobs(text: str, alternatives: Optional[dict] = None) -> list[dict]:
    """`logprobs.content` for a reply: its tokens (each digit one token, as in Llama and Qwen vocabularies), each
    certain unless `alternatives[n]` gives the n-th digit token's top_logprobs as {token: probability}."""
    out, digit = [], 0
    for tok in TOKEN.findall(text):
        alts = {tok: 1.0}
        if tok.isdigit():
            alts = (alternatives or {}).get(digit, alts); digit += 1
        top = [{'token': t, 'logprob': math.log(p), 'bytes': list(t.encode())} for t, p in alts.items() if p > 0]
        out.append({'token': tok, 'logprob': math.log(alts.get(tok, 1e-9) or 1e-9), 'bytes': list(tok.encode()), 'top_logprobs': top})
    return out


class FakeOpenAI:
    "The server's state and settings; `start()` serves it on 127.0.0.1 in a background thread."

    def __init__(self, reply: Callable = default_reply, *, latency_s: float = 0.0, schedule: Optional[dict] = None,
                 fault_rate: Optional[dict] = None, fault_fn: Optional[Callable] = None, seed: int = 0,
                 retry_after_s: Optional[float] = 1.0, retry_after_ms: Optional[float] = None, hang_s: float = 30.0,
                 rpm: Optional[int] = None, window_s: float = 60.0, batch_polls: int = 0,
                 batch_fail_ids=(), host: str = '127.0.0.1', port: int = 0, batch_gate=None,
                 batch_max_requests: int = 50_000, batch_max_file_bytes: int = 200*1024*1024, upload_latency_s: float = 0.0,
                 api_key: Optional[str] = None, models_root: Optional[str] = None):
        self.reply, self.latency_s, self.schedule = reply, latency_s, dict(schedule or {})
        self.fault_rate, self.fault_fn, self.rng = dict(fault_rate or {}), fault_fn, random.Random(seed)
        self.retry_after_s, self.retry_after_ms, self.hang_s = retry_after_s, retry_after_ms, hang_s
        self.rpm, self.window_s, self.batch_polls, self.batch_fail_ids = rpm, window_s, batch_polls, set(batch_fail_ids)
        self.host, self.port = host, port
        self.batch_gate, self.batch_max_requests, self.batch_max_file_bytes = batch_gate, batch_max_requests, batch_max_file_bytes
        self.upload_latency_s, self.api_key, self.models_root = upload_latency_s, api_key, models_root
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.reset_counters()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._httpd = self._thread = None

    def reset_counters(self):
        "Zero every counter (files and batches are kept)."
        self.counts, self.served, self.faults, self.paths, self.batch_counts = Counter(), Counter(), Counter(), Counter(), Counter()
        self.auth = Counter()   # Authorization header values received (tests check keys are sent, and sent only here)
        self.n_chat = self.rate_limited = self.batches_created = self.files_uploaded = 0
        self._window: deque = deque()

    # ---- lifecycle
    @property
    def base_url(self) -> str: return f'http://{self.host}:{self.port}/v1'

    def start(self) -> 'FakeOpenAI':
        "Bind (a free port unless one was given) and serve in a daemon thread."
        srv = self
        class Handler(_Handler): server_state = srv
        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        "Stop serving (hanging requests are released) and close the socket."
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown(); self._httpd.server_close(); self._httpd = None

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()

    def stats(self) -> dict:
        "Every counter, JSON-ready."
        with self.lock:
            return {'n_chat': self.n_chat, 'rate_limited': self.rate_limited, 'batches_created': self.batches_created,
                    'files_uploaded': self.files_uploaded, 'counts': dict(self.counts), 'served': dict(self.served),
                    'faults': dict(self.faults), 'paths': dict(self.paths), 'batch_counts': dict(self.batch_counts)}

    # ---- decisions
    def admit(self) -> Optional[float]:
        "Count a request against the rate limit; None if admitted, else the seconds until there is room."
        if not self.rpm: return None
        with self.lock:
            now = time.monotonic()
            while self._window and self._window[0] <= now - self.window_s: self._window.popleft()
            if len(self._window) >= self.rpm:
                self.rate_limited += 1
                return self._window[len(self._window) - self.rpm] + self.window_s - now
            self._window.append(now); return None

    def pick_fault(self, body: dict, n: int, key_seen: int) -> Optional[str]:
        "The fault for the n-th request: schedule first, then fault_fn, then fault_rate."
        f = self.schedule.get(n)
        if f is None and self.fault_fn is not None: f = self.fault_fn(body, n, key_seen)
        if f is None and self.fault_rate:
            with self.lock:
                for name, p in self.fault_rate.items():
                    if self.rng.random() < p: f = name; break
        if f is not None and f not in FAULTS: raise ValueError(f"unknown fault {f!r}; faults are {FAULTS}")
        return f

    def completion(self, body: dict, fault: Optional[str] = None) -> dict:
        "A chat.completion object for `body` (honouring max_tokens), shaped by a content fault if any."
        out = self.reply(body)
        text, finish, alternatives = (tuple(out) + (None,))[:3] if isinstance(out, tuple) else (out, 'stop', None)
        limit = body.get('max_completion_tokens') or body.get('max_tokens')
        if limit and n_tokens(text) > limit: text, finish = text[:4*limit], 'length'
        if fault == 'length': text, finish = text[:max(1, len(text)//2)], 'length'
        elif fault == 'garbled': text = '}{ \x07garbled\ufffd' + text[::-1][:20]
        elif fault == 'empty': text = ''
        prompt = sum(n_tokens(m.get('content') or '') if isinstance(m.get('content'), str) else 1 for m in body.get('messages') or [])
        return {'id': f'chatcmpl-{uuid.uuid4().hex[:12]}', 'object': 'chat.completion', 'created': int(time.time()),
                'model': body.get('model', 'fake'), 'system_fingerprint': 'fake',
                'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': text}, 'finish_reason': finish,
                             'logprobs': {'content': token_logprobs(text, alternatives)} if body.get('logprobs') else None}],
                'usage': {'prompt_tokens': prompt, 'completion_tokens': 0 if not text else n_tokens(text),
                          'total_tokens': prompt + (0 if not text else n_tokens(text))}}

    def text_completion(self, body: dict, fault: Optional[str] = None) -> dict:
        "A text_completion object for a /v1/completions `body`: the chat reply to its prompt, as `text`."
        chat = self.completion({**body, 'messages': [{'role': 'user', 'content': body['prompt']}]}, fault)
        ch = chat['choices'][0]
        return {**chat, 'id': chat['id'].replace('chatcmpl', 'cmpl'), 'object': 'text_completion',
                'choices': [{'index': 0, 'text': ch['message']['content'], 'finish_reason': ch['finish_reason'], 'logprobs': None}]}

    # ---- batches
    def may_end(self, b: dict) -> bool:
        "Whether batch `b` may end now (its polls are done and the gate, if any, lets it through)."
        return b['_polls'] > self.batch_polls and (self.batch_gate is None or b['_n'] in self.batch_gate)

    def run_batch(self, b: dict):
        "Answer every line of a batch's input file; write its output and error files (or fail it over the limit)."
        out, err = [], []
        lines = [x for x in self.files[b['input_file_id']]['data'].decode('utf-8').split('\n') if x.strip()]   # as OpenAI: U+2028 is text
        if len(lines) > self.batch_max_requests:
            msg = f'The batch input file has {len(lines)} requests; a batch can have at most {self.batch_max_requests}.'
            b['errors'] = {'object': 'list', 'data': [{'code': 'too_many_requests', 'message': msg, 'param': None, 'line': None}]}
            b['status'], b['failed_at'] = 'failed', int(time.time())
            return
        for line in lines:
            if not line.strip(): continue
            req = json.loads(line); cid = req['custom_id']
            if cid in self.batch_fail_ids:
                err.append({'id': f'batch_req_{uuid.uuid4().hex[:10]}', 'custom_id': cid, 'response': None,
                            'error': {'code': 'server_error', 'message': 'injected batch line failure'}})
                continue
            with self.lock: self.batch_counts[request_key(req['body'])] += 1
            out.append({'id': f'batch_req_{uuid.uuid4().hex[:10]}', 'custom_id': cid, 'error': None,
                        'response': {'status_code': 200, 'request_id': uuid.uuid4().hex,
                                     'body': self.text_completion(req['body']) if 'prompt' in req['body'] else self.completion(req['body'])}})
        b['output_file_id'] = self.add_file(out, 'batch_output') if out else None
        b['error_file_id'] = self.add_file(err, 'batch_output') if err else None
        b['request_counts'] = {'total': len(out) + len(err), 'completed': len(out), 'failed': len(err)}
        b['status'], b['completed_at'] = 'completed', int(time.time())

    def add_file(self, lines_or_bytes, purpose: str, filename: str = 'output.jsonl') -> str:
        data = lines_or_bytes if isinstance(lines_or_bytes, bytes) else ''.join(json.dumps(x) + '\n' for x in lines_or_bytes).encode()
        fid = f'file-{uuid.uuid4().hex[:16]}'
        self.files[fid] = {'id': fid, 'object': 'file', 'bytes': len(data), 'created_at': int(time.time()),
                           'filename': filename, 'purpose': purpose, 'status': 'processed', 'data': data}
        return fid


def _file_obj(f: dict) -> dict: return {k: v for k, v in f.items() if k != 'data'}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_state: FakeOpenAI = None

    def log_message(self, *a): pass

    def handle(self):
        try: super().handle()
        except (OSError, ValueError): pass   # the client went away, or we reset the connection on purpose

    def finish(self):
        try: super().finish()
        except (OSError, ValueError): pass

    # ---- plumbing
    def _body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            data = b''
            while True:
                size = int(self.rfile.readline().strip().split(b';')[0], 16)
                if size == 0: self.rfile.readline(); return data
                data += self.rfile.read(size); self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _send(self, code: int, obj=None, headers: Optional[dict] = None, raw: Optional[bytes] = None, ctype='application/json'):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header('Content-Type', ctype); self.send_header('Content-Length', str(len(data)))
        for k, v in (headers or {}).items(): self.send_header(k, v)
        self.end_headers(); self.wfile.write(data); self.wfile.flush()

    def _error(self, code: int, msg: str, typ='invalid_request_error', headers=None):
        self._send(code, {'error': {'message': msg, 'type': typ, 'param': None, 'code': None}}, headers)

    def _reset(self):
        "Drop the connection with a TCP reset and no response."
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            self.connection.close()
        except OSError: pass
        self.close_connection = True

    def _count(self):
        with self.server_state.lock:
            self.server_state.paths[f'{self.command} {self.path.split("?")[0]}'] += 1
            self.server_state.auth[self.headers.get('Authorization', '')] += 1

    # ---- routes
    def do_GET(self):
        s, p = self.server_state, self.path.split('?')[0].rstrip('/')
        self._count()
        if p == '/_stats': return self._send(200, s.stats())
        if p == '/v1/batches':
            data = [{k: v for k, v in b.items() if not k.startswith('_')} for b in reversed(list(s.batches.values()))]
            return self._send(200, {'object': 'list', 'data': data, 'has_more': False,
                                    'first_id': data[0]['id'] if data else None, 'last_id': data[-1]['id'] if data else None})
        if p == '/v1/models':
            m = {'id': 'fake', 'object': 'model', 'created': int(time.time()), 'owned_by': 'tests'}
            return self._send(200, {'object': 'list', 'data': [{**m, 'root': s.models_root} if s.models_root else m]})
        parts = p.split('/')
        if p.startswith('/v1/files/') and len(parts) in (4, 5):
            f = s.files.get(parts[3])
            if f is None: return self._error(404, f'no file {parts[3]}')
            if len(parts) == 5 and parts[4] == 'content': return self._send(200, raw=f['data'], ctype='application/octet-stream')
            return self._send(200, _file_obj(f))
        if p.startswith('/v1/batches/') and len(parts) == 4:
            b = s.batches.get(parts[3])
            if b is None: return self._error(404, f'no batch {parts[3]}')
            with s.lock:
                b['_polls'] += 1
                ready = b['status'] in ('validating', 'in_progress') and s.may_end(b)
                if b['status'] == 'validating': b['status'] = 'in_progress'
            if ready: s.run_batch(b)
            return self._send(200, {k: v for k, v in b.items() if not k.startswith('_')})
        self._error(404, f'unknown route GET {p}')

    def do_POST(self):
        s, p = self.server_state, self.path.split('?')[0].rstrip('/')
        self._count()
        raw = self._body()
        if s.api_key is not None and self.headers.get('Authorization') != f'Bearer {s.api_key}':
            return self._error(401, 'Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.')
        if p == '/v1/chat/completions': return self._chat(raw)
        if p == '/v1/completions': return self._chat(raw, completions=True)
        if p == '/v1/files': return self._upload(raw)
        if p == '/v1/batches':
            body = json.loads(raw or b'{}')
            if body.get('input_file_id') not in s.files: return self._error(400, f"no file {body.get('input_file_id')}")
            bid = f'batch_{uuid.uuid4().hex[:16]}'
            b = {'id': bid, 'object': 'batch', 'endpoint': body.get('endpoint'), 'input_file_id': body['input_file_id'],
                 'completion_window': body.get('completion_window', '24h'), 'status': 'validating', 'created_at': int(time.time()),
                 'output_file_id': None, 'error_file_id': None, 'errors': None, 'metadata': body.get('metadata'),
                 'request_counts': {'total': 0, 'completed': 0, 'failed': 0}, '_polls': 0}
            with s.lock: s.batches_created += 1; b['_n'] = s.batches_created; s.batches[bid] = b
            return self._send(200, {k: v for k, v in b.items() if not k.startswith('_')})
        parts = p.split('/')
        if p.startswith('/v1/batches/') and p.endswith('/cancel') and len(parts) == 5 and parts[3] in s.batches:
            b = s.batches[parts[3]]; b['status'] = 'cancelled'
            return self._send(200, {k: v for k, v in b.items() if not k.startswith('_')})
        self._error(404, f'unknown route POST {p}')

    def _upload(self, raw: bytes):
        s = self.server_state
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b'Content-Type: ' + self.headers.get('Content-Type', '').encode() + b'\r\n\r\n' + raw)
        fields, data, filename = {}, None, 'upload.jsonl'
        for part in msg.iter_parts():
            name = part.get_param('name', header='content-disposition')
            if part.get_filename(): data, filename = part.get_payload(decode=True), part.get_filename()
            else: fields[name] = part.get_payload(decode=True).decode()
        if data is None: return self._error(400, 'no file in the upload')
        if fields.get('purpose', 'batch') == 'batch' and len(data) > s.batch_max_file_bytes:
            return self._error(400, f'File is too large: {len(data)} bytes. Files for the Batch API can be at most '
                                    f'{s.batch_max_file_bytes} bytes.')
        with s.lock: s.files_uploaded += 1
        if s.upload_latency_s: time.sleep(s.upload_latency_s)
        fid = s.add_file(data, fields.get('purpose', 'batch'), filename)
        self._send(200, _file_obj(s.files[fid]))

    def _chat(self, raw: bytes, completions: bool = False):
        s = self.server_state
        try: body = json.loads(raw)
        except json.JSONDecodeError: return self._error(400, 'request body is not JSON')
        if completions and not isinstance(body.get('prompt'), str): return self._error(400, "'prompt' is required")
        if not completions and not isinstance(body.get('messages'), list): return self._error(400, "'messages' is required")
        key = request_key(body)
        with s.lock:
            s.n_chat += 1; n = s.n_chat; seen = s.counts[key]; s.counts[key] += 1
        wait = s.admit()
        if wait is not None:
            return self._error(429, 'Rate limit reached (requests per minute)', 'requests',
                               {'Retry-After': str(max(1, math.ceil(wait))), 'retry-after-ms': str(int(wait*1000) + 1)})
        fault = s.pick_fault(body, n, seen)
        if fault: 
            with s.lock: s.faults[fault] += 1
        if s.latency_s: time.sleep(s.latency_s)
        if fault == '429':
            h = {}
            if s.retry_after_s is not None: h['Retry-After'] = str(s.retry_after_s if s.retry_after_s != int(s.retry_after_s) else int(s.retry_after_s))
            if s.retry_after_ms is not None: h['retry-after-ms'] = str(s.retry_after_ms)
            return self._error(429, 'Rate limit reached (injected)', 'requests', h)
        if fault in ('500', '503'): return self._error(int(fault), f'injected {fault}', 'server_error')
        if fault == 'reset': return self._reset()
        if fault == 'hang':
            s.stopping.wait(s.hang_s); return self._reset()
        if fault == 'badjson': return self._send(200, raw=b'{"id": "chatcmpl-broken", "choices": [', ctype='application/json')
        with s.lock: s.served[key] += 1
        self._send(200, s.text_completion(body, fault) if completions else s.completion(body, fault))


@contextmanager
def serve(reply: Callable = default_reply, **kw):
    "Run a `FakeOpenAI` on a free port of 127.0.0.1 for the duration of a `with` block."
    srv = FakeOpenAI(reply, **kw).start()
    try: yield srv
    finally: srv.stop()


try:
    import pytest

    @pytest.fixture
    def openai_server():
        "A fresh server per test (defaults: no latency, no faults); tune its attributes in the test."
        with serve() as srv: yield srv
except ImportError:   # usable without pytest (benchmarks)
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description='Serve a fake OpenAI-compatible API on 127.0.0.1 until killed.')
    ap.add_argument('--port', type=int, default=0); ap.add_argument('--latency-s', type=float, default=0.0)
    ap.add_argument('--rpm', type=int); ap.add_argument('--window-s', type=float, default=60.0)
    ap.add_argument('--fault-rate', action='append', default=[], help='FAULT=P, repeatable')
    ap.add_argument('--batch-polls', type=int, default=0); ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    rates = {f: float(p) for f, p in (x.split('=') for x in a.fault_rate)}
    srv = FakeOpenAI(latency_s=a.latency_s, rpm=a.rpm, window_s=a.window_s, fault_rate=rates, batch_polls=a.batch_polls,
                     seed=a.seed, port=a.port).start()
    print(f'READY {srv.base_url}', flush=True)
    try:
        while True: time.sleep(3600)
    except KeyboardInterrupt: srv.stop()


if __name__ == '__main__':
    main()
