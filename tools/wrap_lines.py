"""Bring the code cells of notebooks within the line limit (110 characters), touching only the long lines.

    python tools/wrap_lines.py nbs/07_loop.ipynb ...     # rewrites the notebooks in place; prints what is left

1. A long comment is wrapped; an inline comment that makes a line long moves above its line.
2. The statement around a long line is reformatted by `ruff format --range` (the rest of the cell is untouched).
3. A string literal that still crosses the limit inside brackets is split into adjacent literals; a long one-line
   docstring becomes a wrapped triple-quoted one.
Cells with IPython magics are left alone. Run `nbdev_export` afterwards, and read the diff.
"""
import io, json, re, subprocess, sys, textwrap, tokenize
from pathlib import Path

LIMIT = 110
root = Path(__file__).resolve().parents[1]
RUFF = [str(Path(sys.executable).parent/'ruff'), 'format', '--config', 'line-length = 110',
        '--config', 'format.quote-style = "preserve"', '--config', 'format.skip-magic-trailing-comma = true',
        '--config', 'lint.isort.split-on-trailing-comma = false']

def long_lines(src: str) -> list[int]:
    "1-based numbers of the lines over the limit."
    return [i for i, l in enumerate(src.split('\n'), 1) if len(l) > LIMIT]

def ruff_range(src: str, line: int) -> str:
    "`src` with the statement around `line` reformatted (unchanged when ruff cannot parse it)."
    r = subprocess.run(RUFF + ['--range', f'{line}:1-{line}:{LIMIT + 500}', '-'], input=src, capture_output=True,
                       text=True)
    if r.returncode: return src
    return r.stdout[:-1] if r.stdout.endswith('\n') and not src.endswith('\n') else r.stdout

def string_tokens(src: str):
    "(token, bracket depth, is a docstring-like statement) for each string token of `src`."
    depth, prev, out = 0, None, []
    try:
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.type == tokenize.OP and t.string in '([{': depth += 1
            elif t.type == tokenize.OP and t.string in ')]}': depth -= 1
            elif t.type == tokenize.STRING:
                alone = depth == 0 and (prev is None or prev.type in (tokenize.INDENT, tokenize.NEWLINE,
                                                                      tokenize.DEDENT, tokenize.NL))
                out.append((t, depth, alone))
            if t.type not in (tokenize.COMMENT,): prev = t
    except (tokenize.TokenError, IndentationError, SyntaxError): return []
    return out

def split_point(body: str, width: int, fstring: bool) -> int:
    "Where to cut the literal's `body` (after a space, at most `width` in, outside f-string braces); 0: nowhere."
    depth, best = 0, 0
    for i, ch in enumerate(body[:width]):
        if fstring and ch == '{': depth += 1
        elif fstring and ch == '}': depth -= 1
        elif ch == ' ' and depth == 0 and i > 10: best = i + 1
    return best

def split_string(src: str, tok, docstring: bool) -> str:
    "`src` with the one-line literal `tok` split at the limit (None when it cannot be)."
    m = re.match(r'([rRbBfFuU]*)(\'|")', tok.string)
    if not m or tok.string.startswith((m.group(0) * 3)) or tok.start[0] != tok.end[0]: return None
    prefix, q = m.groups()
    body, col = tok.string[len(prefix) + 1:-1], tok.start[1]
    cut = split_point(body, LIMIT - col - len(prefix) - 2, 'f' in prefix.lower())
    if not cut: return None
    if docstring:
        if prefix or '"""' in body or '\\' in body: return None
        lines = textwrap.wrap(body, LIMIT - col - 3)
        new = '"""' + ('\n' + ' ' * col).join(lines) + '"""'
    else: new = f"{prefix}{q}{body[:cut]}{q}\n{' ' * col}{prefix}{q}{body[cut:]}{q}"
    lines = src.split('\n')
    row = tok.start[0] - 1
    lines[row] = lines[row][:col] + new + lines[row][tok.end[1]:]
    return '\n'.join(lines)

def fix_strings(src: str) -> str:
    "Split the long string literals that can be split, one at a time."
    for _ in range(200):
        for tok, depth, alone in string_tokens(src):
            if tok.end[1] <= LIMIT or tok.start[0] != tok.end[0]: continue
            new = split_string(src, tok, docstring=alone) if depth or alone else None
            if new is not None and new != src:
                src = new
                break
        else: return src
    return src

def fix_comments(src: str) -> str:
    "Wrap long comment lines; move a long line's inline comment above it."
    out = []
    for line in src.split('\n'):
        if len(line) <= LIMIT or line.lstrip().startswith('#|'): out.append(line); continue
        m = re.match(r'^(\s*)#\s?(.*)$', line)
        if m:
            out += [f"{m.group(1)}# {w}" for w in textwrap.wrap(m.group(2), LIMIT - len(m.group(1)) - 2)]
            continue
        c = inline_comment(line)
        if c is not None and len(line[:c].rstrip()) <= LIMIT:
            ind = re.match(r'\s*', line).group(0)
            text = line[c:].lstrip('#').strip()
            out += [f"{ind}# {w}" for w in textwrap.wrap(text, LIMIT - len(ind) - 2)] + [line[:c].rstrip()]
            continue
        out.append(line)
    return '\n'.join(out)

def inline_comment(line: str):
    "The column of `line`'s inline comment, or None."
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(line + '\n').readline))
    except (tokenize.TokenError, IndentationError, SyntaxError): return None
    cs = [t for t in toks if t.type == tokenize.COMMENT]
    return cs[0].start[1] if cs and cs[0].start[1] > len(line) - len(line.lstrip()) else None

def fix_cell(src: str) -> str:
    "A code cell's source within the limit, as far as the three steps go."
    if re.search(r'^\s*[%!]', src, re.M): return src
    src = fix_comments(src)
    tried = set()
    while True:
        todo = [n for n in long_lines(src) if n not in tried and not src.split('\n')[n - 1].lstrip().startswith('#')]
        if not todo: break
        new = ruff_range(src, todo[0])
        if new == src: tried.add(todo[0])
        else: src, tried = new, set()
    return fix_comments(fix_strings(src))

def fix_notebook(path: Path) -> int:
    "Rewrite `path`'s code cells; return how many long lines are left."
    nb = json.loads(path.read_text())
    left = 0
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        new = fix_cell(src)
        if new != src: c['source'] = [l + '\n' for l in new.split('\n')[:-1]] + [new.split('\n')[-1]]
        left += len(long_lines(new))
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return left

if __name__ == '__main__':
    for p in sys.argv[1:]: print(f"{p}: {fix_notebook(Path(p))} long line(s) left")
