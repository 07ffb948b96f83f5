"""Metadata lives in setup.cfg. This file only makes a wheel carry the top-level `recipes/` and
`saved_models/` (in `zoo/_bundled/`), so that a non-editable install (`pip install .` or from git)
trains the shipped recipes and loads `weights="cifar10"`. An editable install reads them in place."""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent
BUNDLED = {"recipes": shutil.ignore_patterns("*.py", "__pycache__"), "saved_models": None}


class BuildPyWithBundledData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, ignore in BUNDLED.items():
            target = pathlib.Path(self.build_lib) / "zoo" / "_bundled" / folder
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / folder, target, ignore=ignore)


setup(cmdclass={"build_py": BuildPyWithBundledData})
