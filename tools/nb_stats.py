"""The shape of the notebooks and the exported code, in numbers: cells and lines per notebook, export cell
sizes, heading-only and `show_doc` cells, whether each stage notebook opens with its `run_<stage>`, long lines.

    python tools/nb_stats.py            # a table per notebook, then the totals, then one JSON line
    python tools/nb_stats.py --check    # also fail when a limit of docs/DEVELOPING.md is broken
    python tools/nb_stats.py --sections # also list the sections still to cut (over 3 export cells, helpers above)
    python tools/nb_stats.py --root DIR # the same figures for another checkout, e.g. an older commit
                                        # (git worktree add /tmp/before 98d073f)
"""
import ast, io, json, re, statistics, sys, tokenize
from pathlib import Path

root = Path(sys.argv[sys.argv.index('--root') + 1]) if '--root' in sys.argv else Path(__file__).resolve().parents[1]
LIMITS = dict(cell_lines=60, line_chars=110)

def cells(nb: Path) -> list[dict]: return json.loads(nb.read_text())['cells']
def source(c: dict) -> str: return ''.join(c['source'])
def is_export(c: dict) -> bool:
    return c['cell_type'] == 'code' and re.match(r'\s*#\|\s*export', source(c)) is not None

def code_lines(src: str) -> list[str]:
    "A cell's lines without its `#|` directives."
    return [l for l in src.splitlines() if not l.startswith('#|')]

def defined(src: str) -> list[str]:
    "The functions and classes a cell defines at top level, in order."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]

def top_defs(src: str) -> int:
    "Top-level functions and classes a cell defines."
    return len(defined(src))

def exported_names(nb: list[dict]) -> set[str]:
    return {n for c in nb if is_export(c) for n in defined(source(c)) if not n.startswith('_')}

def headed_names(nb: list[dict]) -> set[str]:
    "Exported names whose cell follows (within two cells) a markdown heading that names them."
    out = set()
    for i, c in enumerate(nb):
        if not is_export(c): continue
        heads = ' '.join(source(x) for x in nb[max(0, i - 2):i] if x['cell_type'] == 'markdown')
        heads = ' '.join(l for l in heads.splitlines() if l.startswith('#'))
        out |= {n for n in defined(source(c)) if n in heads}
    return out

def intro(nb: list[dict]) -> str:
    "The markdown before the notebook's first `##` heading."
    out = []
    for c in nb:
        if c['cell_type'] == 'markdown' and re.search(r'^##\s', source(c), re.M): break
        if c['cell_type'] == 'markdown': out.append(source(c))
    return '\n'.join(out)

def heading_only(c: dict) -> bool:
    "A markdown cell that is nothing but headings."
    lines = [l for l in source(c).splitlines() if l.strip()]
    return c['cell_type'] == 'markdown' and bool(lines) and all(l.lstrip().startswith('#') for l in lines)

def sections(nb: list[dict]) -> list[tuple[str, list[str]]]:
    "Each `##` section's heading and the sources of its export cells."
    out = []
    for c in nb:
        if c['cell_type'] == 'markdown' and re.match(r'##\s', source(c)): out.append((source(c).splitlines()[0], []))
        elif is_export(c) and out: out[-1][1].append(source(c))
    return out

def section_export_cells(nb: list[dict]) -> list[int]:
    "The number of export cells in each `##` section."
    return [len(srcs) for _, srcs in sections(nb)]

def called_later(node: ast.AST) -> list[ast.stmt]:
    "The statements of a definition that run only when it is called: function bodies, a class's method bodies."
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): return node.body
    if isinstance(node, ast.ClassDef): return [s for n in node.body for s in called_later(n)]
    return []

def used(src: str) -> set[str]:
    """The names a cell's functions read when called. Decorators, defaults, base classes and module-level code run at
    import, so what they use must stay above them, and is not counted."""
    try: tree = ast.parse(src)
    except SyntaxError: return set()
    return {x.id for n in tree.body for st in called_later(n) for x in ast.walk(st) if isinstance(x, ast.Name)}

def helpers_above_callers(srcs: list[str]) -> int:
    "Within one section: definitions that a later export cell of the section calls (a helper above its caller)."
    return sum(bool(set(defined(a)) & used(b) - set(defined(b))) for i, a in enumerate(srcs) for b in srcs[i + 1:])

def checks(src: str) -> int:
    "The assertions a test cell makes: `assert` statements and `test_*` calls (fastcore's `test_eq`, `test_fail`...)."
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return 0
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return sum(isinstance(n, ast.Assert) for n in ast.walk(tree)) + sum(
        getattr(f, 'id', getattr(f, 'attr', '')).startswith('test_') for f in calls)

def notebook_stats(path: Path) -> dict:
    nb = cells(path)
    ex = [code_lines(source(c)) for c in nb if is_export(c)]
    sizes = [len(l) for l in ex]
    defs = [top_defs('\n'.join(l)) for l in ex]
    names = exported_names(nb)
    headed = headed_names(nb)
    named = sorted(n for n in names if re.search(rf'`[\w.]*\b{re.escape(n)}\b', intro(nb)))
    return dict(notebook=path.name, export_cells=len(ex), median=statistics.median(sizes) if sizes else 0,
                max=max(sizes, default=0), over_limit=sum(s > LIMITS['cell_lines'] for s in sizes),
                defs=sum(defs), defs_per_cell=round(sum(defs) / len(ex), 2) if ex else 0,
                intro_names=len(named), public=len(names), headed=len(headed & names), show_doc=sum(source(c).count('show_doc(') for c in nb if c['cell_type'] == 'code'),
                cells=len(nb), lines=sum(len(source(c).splitlines()) for c in nb),
                heading_only=sum(map(heading_only, nb)), sections=len(section_export_cells(nb)),
                sections_over_3=sum(n > 3 for n in section_export_cells(nb)),
                helpers_above=sum(helpers_above_callers(srcs) for _, srcs in sections(nb)),
                checks=sum(checks(source(c)) for c in nb if c['cell_type'] == 'code' and not is_export(c)),
                show_doc_cells=sum(c['cell_type'] == 'code' and 'show_doc(' in source(c) for c in nb), sizes=sizes)

def joined_statements(src: str) -> int:
    "Lines that hold a `;` between statements."
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    return len({t.start[0] for t in toks if t.type == tokenize.OP and t.string == ';'})

def nested_imports(tree: ast.Module) -> int:
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len({id(i) for f in funcs for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))})

def written_lines(src: str) -> list[str]:
    "A module's lines without what nbdev generates: its header, `__all__` and the `# %%` cell markers."
    out, in_all = [], False
    for l in src.splitlines():
        if l.startswith('__all__'): in_all = True
        if in_all:
            in_all = not l.rstrip().endswith(']')
            continue
        if l.startswith(('# %% ../nbs/', '# AUTOGENERATED!')): continue
        out.append(l)
    return out

def module_stats(path: Path) -> dict:
    src = path.read_text()
    lines = written_lines(src)
    tree = ast.parse(src)
    own_guard = len(re.findall(r'except ImportError', src))
    return dict(module=path.name, lines=len(lines), over_100=sum(len(l) > 100 for l in lines),
                over_110=sum(len(l) > LIMITS['line_chars'] for l in lines), joined=joined_statements(src),
                nested_imports=nested_imports(tree), except_import_error=own_guard,
                dunder_import=len(re.findall(r'__import__\(', src)))

# Each stage notebook opens with its stage: `run_<stage>` is its first definition, within the first screen.
STAGE_NOTEBOOKS = {'02_pools.ipynb': 'run_pools', '03_imitation.ipynb': 'run_imitation',
                   '04_discrimination.ipynb': 'run_discrimination', '05_generation.ipynb': 'run_generation',
                   '05b_selection.ipynb': 'run_selection', '06_evaluation.ipynb': 'run_evaluation'}
FIRST_SCREEN = 8  # cells: the title, the intro, the imports, the stage

def first_definition(nb: list[dict]) -> tuple[int, str]:
    "The index of the first export cell that defines something, and the first name it defines."
    for i, c in enumerate(nb):
        if is_export(c) and (defs := defined(source(c))): return i, defs[0]
    return -1, ''

def opens_with_run(path: Path) -> bool:
    want = STAGE_NOTEBOOKS.get(path.name)
    if want is None: return True
    i, name = first_definition(cells(path))
    return name == want and 0 <= i < FIRST_SCREEN

def print_sections(paths: list[Path]):
    "The sections still to cut: more than three export cells, or a helper above its caller."
    for p in paths:
        for head, srcs in sections(cells(p)):
            n, above = len(srcs), helpers_above_callers(srcs)
            if n > 3 or above: print(f"{p.name:<26}{n:>3} export{above:>3} helper-above  {head[:70]}")

def main(check: bool = False) -> int:
    paths = sorted((root/'nbs').glob('*.ipynb'))
    nbs = [notebook_stats(p) for p in paths]
    mods = [module_stats(p) for p in sorted((root/'lion_nb').rglob('*.py')) if p.name != '_modidx.py']
    print(f"{'notebook':<26}{'cells':>6}{'lines':>7}{'export':>7}{'max':>5}{'heading':>8}{'show_doc':>9}"
          f"{'intro':>6}{'opens':>6}")
    for p, s in zip(paths, nbs):
        opens = ('yes' if opens_with_run(p) else 'NO') if p.name in STAGE_NOTEBOOKS else ''
        print(f"{s['notebook']:<26}{s['cells']:>6}{s['lines']:>7}{s['export_cells']:>7}{s['max']:>5}"
              f"{s['heading_only']:>8}{s['show_doc_cells']:>9}{s['intro_names']:>6}{opens:>6}")
    sizes = [n for s in nbs for n in s['sizes']]
    lines = sum(m['lines'] for m in mods)
    by_name = {s['notebook']: s for s in nbs}
    total = dict(cells=sum(s['cells'] for s in nbs), cells_per_notebook={s['notebook']: s['cells'] for s in nbs},
                 lines_04_discrimination=by_name['04_discrimination.ipynb']['lines'],
                 lines_06_evaluation=by_name['06_evaluation.ipynb']['lines'], module_lines=lines,
                 heading_only_cells=sum(s['heading_only'] for s in nbs),
                 show_doc_cells=sum(s['show_doc_cells'] for s in nbs),
                 sections=sum(s['sections'] for s in nbs),
                 sections_over_3_export_cells=sum(s['sections_over_3'] for s in nbs),
                 helpers_above_callers=sum(s['helpers_above'] for s in nbs),
                 notebook_checks=sum(s['checks'] for s in nbs),
                 checks_per_notebook={s['notebook']: s['checks'] for s in nbs},
                 export_cells=len(sizes), median_cell_lines=statistics.median(sizes),
                 cells_over_limit=sum(n > LIMITS['cell_lines'] for n in sizes), max_cell_lines=max(sizes),
                 defs_per_cell=round(sum(s['defs'] for s in nbs) / len(sizes), 2),
                 stage_notebooks_not_opening_with_run=[p.name for p in paths if not opens_with_run(p)],
                 intros_naming_functions=sum(s['intro_names'] >= 3 for s in nbs if s['export_cells']),
                 public_defs=sum(s['public'] for s in nbs), public_defs_headed=sum(s['headed'] for s in nbs),
                 share_over_100=round(sum(m['over_100'] for m in mods) / lines, 3),
                 lines_over_110=sum(m['over_110'] for m in mods), joined_statement_lines=sum(m['joined'] for m in mods),
                 nested_imports=sum(m['nested_imports'] for m in mods),
                 except_import_error=sum(m['except_import_error'] for m in mods))
    if '--sections' in sys.argv: print_sections(paths)
    print()
    for k, v in total.items():
        if k not in ('cells_per_notebook', 'checks_per_notebook'): print(f"{k:<38}{v}")
    print(json.dumps(total))
    if not check: return 0
    broken = [f"{k} is {total[k]}" for k, bad in [('cells_over_limit', total['cells_over_limit'] > 0),
              ('lines_over_110', total['lines_over_110'] > 0),
              ('sections_over_3_export_cells', total['sections_over_3_export_cells'] > 0),
              ('helpers_above_callers', total['helpers_above_callers'] > 0),
              ('stage_notebooks_not_opening_with_run', bool(total['stage_notebooks_not_opening_with_run']))] if bad]
    for b in broken: print(f"nb_stats: {b}, over the limit", file=sys.stderr)
    return 1 if broken else 0

if __name__ == '__main__': sys.exit(main('--check' in sys.argv))
