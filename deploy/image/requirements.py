"""Prints the requirements of one of pyproject.toml's extras, one a line, for pip -r.

The image installs its dependencies from this list before it copies the source, so that a
change to the code rebuilds one small layer instead of every dependency. A requirement on
videoserve itself (`videoserve[server]`) is expanded into that extra's list.
    python3 requirements.py pyproject.toml worker
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(project: dict, extra: str) -> list[str]:
    extras = project["optional-dependencies"]
    found: list[str] = list(project["dependencies"])
    for requirement in extras[extra]:
        own = re.fullmatch(r"videoserve\[([\w,-]+)\]", requirement.replace(" ", ""))
        if own:
            for name in own.group(1).split(","):
                found += requirements({**project, "dependencies": []}, name)
        else:
            found.append(requirement)
    return list(dict.fromkeys(found))


if __name__ == "__main__":
    path, extra = sys.argv[1:3]
    with open(path, "rb") as file:
        print("\n".join(requirements(tomllib.load(file)["project"], extra)))
