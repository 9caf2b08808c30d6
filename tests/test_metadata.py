"""The version: one number, whichever way it is asked for (the module, the
installed distribution's metadata, the info command, the changelog)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pytest

import hermes_kanban_native as hkn

CHANGELOG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "CHANGELOG.md")


def _info(*extra):
    return subprocess.run([sys.executable, "-m", "hermes_kanban_native", "info", *extra],
                          capture_output=True, text=True, cwd="/", timeout=120)


def test_version_is_the_installed_distributions():
    assert hkn.__version__ == importlib.metadata.version("hermes-kanban-native")


def test_the_changelog_names_this_version_first():
    with open(CHANGELOG, encoding="utf-8") as handle:
        versions = re.findall(r"^## (\S+)", handle.read(), flags=re.MULTILINE)
    assert versions and versions[0] == hkn.__version__


@pytest.mark.isolated
def test_info_prints_the_package_version_beside_sqlites():
    done = _info()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    version = importlib.metadata.version("hermes-kanban-native")
    at = lines.index(f"  package version {version}")
    assert lines[at + 1] == f"  SQLite version  {hkn.sqlite_api()['sqlite_version']}"

    report = json.loads(_info("--json").stdout)
    assert report["package"] == version
    assert report["sqlite_version"] == hkn.sqlite_api()["sqlite_version"]
