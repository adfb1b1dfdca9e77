"""Render nbs/index.ipynb to README.md offline (nbdev_readme needs Quarto, which needs the network).

`python tools/readme.py` writes README.md; `python tools/readme.py --check` exits 1 if it is stale, or if the
index's copy of `lion` (the algorithm, shown as the map of the notebooks) differs from `lion_nb/algorithm.py`'s.
"""
import ast, re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parents[1]

def render() -> str:
    nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
    nb.cells = [c for c in nb.cells if not c.source.lstrip().startswith('#| hide')]
    body, _ = MarkdownExporter(exclude_output_prompt=True, exclude_input_prompt=True).from_notebook_node(nb)
    note = '<!-- WARNING: generated from nbs/index.ipynb by tools/readme.py; edit the notebook, not this file -->\n\n'
    return note + body.strip() + '\n'

def lion_source() -> str:
    "The source of `lion` in lion_nb/algorithm.py, read without importing the package."
    src = (root/"lion_nb"/"algorithm.py").read_text(encoding='utf-8')
    node = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == 'lion')
    return ast.get_source_segment(src, node)

def index_lion_is_current() -> bool:
    nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
    blocks = [m.group(1) for c in nb.cells for m in re.finditer(r'```python\n(def lion\(.*?)\n```', c.source, re.S)]
    return blocks == [lion_source()]

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not index_lion_is_current():
            print("check_readme: the index's copy of lion() differs from lion_nb/algorithm.py's; paste the new one",
                  file=sys.stderr)
            sys.exit(1)
        ok = readme.exists() and readme.read_text(encoding='utf-8') == text
        if not ok: print('check_readme: README.md is out of date with nbs/index.ipynb (run python tools/readme.py)', file=sys.stderr)
        sys.exit(0 if ok else 1)
    readme.write_text(text, encoding='utf-8')
