"""The shape of the notebooks and the exported code, in numbers: export cell sizes, definitions per cell, long
lines, joined statements, imports inside functions, and which introductions name their notebook's functions.

    python tools/nb_stats.py            # a table per notebook, then the totals, then one JSON line
    python tools/nb_stats.py --check    # also fail when a limit of DEVELOPING.md is broken
"""
import ast, io, json, re, statistics, sys, tokenize
from pathlib import Path

root = Path(__file__).resolve().parents[1]
LIMITS = dict(cell_lines=40, median_cell_lines=12, defs_per_cell=1.5, line_chars=110)

def cells(nb: Path) -> list[dict]: return json.loads(nb.read_text())['cells']
def source(c: dict) -> str: return ''.join(c['source'])
def is_export(c: dict) -> bool:
    return c['cell_type'] == 'code' and re.match(r'\s*#\|\s*export', source(c)) is not None

def code_lines(src: str) -> list[str]:
    "A cell's lines without its `#|` directives."
    return [l for l in src.splitlines() if not l.startswith('#|')]

def top_defs(src: str) -> int:
    "Top-level functions and classes a cell defines."
    try: tree = ast.parse(src)
    except SyntaxError: return 0
    return sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)

def exported_names(nb: list[dict]) -> set[str]:
    names = set()
    for c in nb:
        if not is_export(c): continue
        try: tree = ast.parse(source(c))
        except SyntaxError: continue
        names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith('_')}
    return names

def intro(nb: list[dict]) -> str:
    "The markdown before the notebook's first `##` heading."
    out = []
    for c in nb:
        if c['cell_type'] == 'markdown' and re.search(r'^##\s', source(c), re.M): break
        if c['cell_type'] == 'markdown': out.append(source(c))
    return '\n'.join(out)

def notebook_stats(path: Path) -> dict:
    nb = cells(path)
    ex = [code_lines(source(c)) for c in nb if is_export(c)]
    sizes = [len(l) for l in ex]
    defs = [top_defs('\n'.join(l)) for l in ex]
    names = exported_names(nb)
    named = sorted(n for n in names if re.search(rf'`[\w.]*\b{re.escape(n)}\b', intro(nb)))
    return dict(notebook=path.name, export_cells=len(ex), median=statistics.median(sizes) if sizes else 0,
                max=max(sizes, default=0), over_40=sum(s > LIMITS['cell_lines'] for s in sizes),
                defs=sum(defs), defs_per_cell=round(sum(defs) / len(ex), 2) if ex else 0,
                intro_names=len(named), show_doc=sum(source(c).count('show_doc(') for c in nb if c['cell_type'] == 'code'),
                sizes=sizes)

def joined_statements(src: str) -> int:
    "Lines that hold a `;` between statements."
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    return len({t.start[0] for t in toks if t.type == tokenize.OP and t.string == ';'})

def nested_imports(tree: ast.Module) -> int:
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len({id(i) for f in funcs for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))})

def module_stats(path: Path) -> dict:
    src = path.read_text(); lines = src.splitlines(); tree = ast.parse(src)
    own_guard = len(re.findall(r'except ImportError', src))
    return dict(module=path.name, lines=len(lines), over_100=sum(len(l) > 100 for l in lines),
                over_110=sum(len(l) > LIMITS['line_chars'] for l in lines), joined=joined_statements(src),
                nested_imports=nested_imports(tree), except_import_error=own_guard,
                dunder_import=len(re.findall(r'__import__\(', src)))

def main(check: bool = False) -> int:
    nbs = [notebook_stats(p) for p in sorted((root/'nbs').glob('*.ipynb'))]
    mods = [module_stats(p) for p in sorted((root/'lion_nb').rglob('*.py')) if p.name != '_modidx.py']
    print(f"{'notebook':<26}{'cells':>6}{'median':>7}{'max':>5}{'>40':>5}{'defs/cell':>10}{'intro':>6}{'show_doc':>9}")
    for s in nbs:
        print(f"{s['notebook']:<26}{s['export_cells']:>6}{s['median']:>7}{s['max']:>5}{s['over_40']:>5}"
              f"{s['defs_per_cell']:>10}{s['intro_names']:>6}{s['show_doc']:>9}")
    sizes = [n for s in nbs for n in s['sizes']]
    lines = sum(m['lines'] for m in mods)
    total = dict(export_cells=len(sizes), median_cell_lines=statistics.median(sizes),
                 cells_over_40=sum(n > LIMITS['cell_lines'] for n in sizes), max_cell_lines=max(sizes),
                 defs_per_cell=round(sum(s['defs'] for s in nbs) / len(sizes), 2),
                 intros_naming_functions=sum(s['intro_names'] >= 3 for s in nbs if s['export_cells']),
                 notebooks_with_exports=sum(bool(s['export_cells']) for s in nbs),
                 show_doc=sum(s['show_doc'] for s in nbs), module_lines=lines,
                 share_over_100=round(sum(m['over_100'] for m in mods) / lines, 3),
                 lines_over_110=sum(m['over_110'] for m in mods), joined_statement_lines=sum(m['joined'] for m in mods),
                 nested_imports=sum(m['nested_imports'] for m in mods),
                 except_import_error=sum(m['except_import_error'] for m in mods),
                 dunder_import=sum(m['dunder_import'] for m in mods))
    print()
    for k, v in total.items(): print(f"{k:<26}{v}")
    print(json.dumps(total))
    if not check: return 0
    broken = [f"{k} is {total[k]}" for k, bad in [('cells_over_40', total['cells_over_40'] > 0),
              ('median_cell_lines', total['median_cell_lines'] > LIMITS['median_cell_lines']),
              ('defs_per_cell', total['defs_per_cell'] > LIMITS['defs_per_cell']),
              ('lines_over_110', total['lines_over_110'] > 0)] if bad]
    for b in broken: print(f"nb_stats: {b}, over the limit", file=sys.stderr)
    return 1 if broken else 0

if __name__ == '__main__': sys.exit(main('--check' in sys.argv))
