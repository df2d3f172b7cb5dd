"""Offline dependency audit: installed versions and setup.cfg floors against .ci/advisories.json.

This machine cannot reach a vulnerability database, so the advisories that
matter to fmkeras (model deserialization and archive extraction in Keras and
TensorFlow) are kept in a table next to this script. Exits 1, naming each
advisory, when an installed version or a declared floor is still affected.

Run: ``python .ci/audit.py``
"""

import configparser
import json
import pathlib
import re
import sys
from importlib import metadata

from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parent.parent


def floors():
    """Return {package: minimum version} from setup.cfg install_requires."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    result = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", line)
        if match:
            result[match.group(1).lower()] = Version(match.group(2))
    return result


def problems(advisories, declared, installed):
    """List one line per advisory that a floor or an installed version still admits."""
    found = []
    for package, entries in advisories.items():
        if package.startswith("_"):
            continue
        for entry in entries:
            fixed = Version(entry["fixed"])
            floor = declared.get(package)
            if floor is None or floor < fixed:
                found.append(f"setup.cfg floor for {package} is {floor or 'missing'}; "
                             f"{entry['id']} ({entry['summary']}) is fixed in {fixed}")
            version = installed.get(package)
            if version is not None and version < fixed:
                found.append(f"installed {package} {version} is affected by {entry['id']} "
                             f"({entry['summary']}); fixed in {fixed}")
    return found


def main():
    advisories = json.loads((ROOT / ".ci" / "advisories.json").read_text(encoding="utf-8"))
    installed = {}
    for package in advisories:
        try:
            installed[package] = Version(metadata.version(package))
        except metadata.PackageNotFoundError:
            pass
    found = problems(advisories, floors(), installed)
    for line in found:
        print(f"audit: {line}", file=sys.stderr)
    count = sum(len(v) for k, v in advisories.items() if not k.startswith("_"))
    print(f"audit: {count} advisories checked, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
