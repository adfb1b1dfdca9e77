"""Give every exported public definition a markdown heading that names it (`### \`name\``), in place.

    python tools/add_headings.py nbs/07_loop.ipynb ...

A definition whose cell follows prose without a heading gets the heading at the top of that prose; otherwise a
new markdown cell with the heading goes right above it. Read the diff: a heading is a start, not the story.
"""
import ast, json, secrets, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from nb_stats import headed_names, is_export, source

def public_defs(src: str) -> list[str]:
    try: tree = ast.parse(src)
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith('_')]

def lines_of(text: str) -> list[str]:
    parts = text.split('\n')
    return [l + '\n' for l in parts[:-1]] + [parts[-1]]

def add_headings(path: Path) -> int:
    nb = json.loads(path.read_text())
    cells, done, added = nb['cells'], headed_names(nb['cells']), 0
    i = 0
    while i < len(cells):
        c = cells[i]
        names = [n for n in public_defs(source(c)) if n not in done] if is_export(c) else []
        if names:
            head = '### ' + ', '.join(f'`{n}`' for n in names)
            prev = cells[i - 1] if i else None
            if prev is not None and prev['cell_type'] == 'markdown' and not source(prev).lstrip().startswith('#'):
                prev['source'] = lines_of(head + '\n\n' + source(prev))
            else:
                cells.insert(i, {'cell_type': 'markdown', 'id': secrets.token_hex(4), 'metadata': {},
                                 'source': lines_of(head)})
                i += 1
            done |= set(names)
            added += len(names)
        i += 1
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return added

if __name__ == '__main__':
    for p in sys.argv[1:]: print(f"{p}: {add_headings(Path(p))} heading(s) added")
