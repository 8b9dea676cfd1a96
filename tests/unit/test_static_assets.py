"""The playground's files: shipped in the package, and its ES modules link.

The browser tests (tests/e2e) load the page for real; these checks need no browser, so they
also run where Chromium is missing: every file under api/static/ is matched by the package data
in pyproject.toml (a wheel without js/ would serve a blank page), and every name a module
imports is exported by the module it names.
"""

from __future__ import annotations

import glob
import re
import tomllib
from pathlib import Path

from videoserve.api.routes.ui import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = STATIC_DIR.parent.parent  # src/videoserve

IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"(\./[\w-]+\.js)";', re.MULTILINE)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function|const|let|class)\s+([\w$]+)", re.MULTILINE)


def test_package_data_ships_every_static_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["videoserve"]
    shipped = {
        Path(match).resolve()
        for pattern in patterns
        for match in glob.glob(str(PACKAGE / pattern))
        if Path(match).is_file()
    }
    files = {path.resolve() for path in STATIC_DIR.rglob("*") if path.is_file()}
    assert files, STATIC_DIR
    assert sorted(str(p.relative_to(PACKAGE)) for p in files - shipped) == []


def test_every_imported_name_is_exported() -> None:
    modules = {path.name: path.read_text() for path in (STATIC_DIR / "js").glob("*.js")}
    exports = {name: set(EXPORT.findall(text)) for name, text in modules.items()}
    missing = []
    for name, text in modules.items():
        for names, source in IMPORT.findall(text):
            target = source.removeprefix("./")
            for imported in (n.strip() for n in names.split(",") if n.strip()):
                if imported not in exports.get(target, set()):
                    missing.append(f"{name} imports {imported} from {source}")
    assert missing == []
    # Nothing is imported any other way (a default import, a bare specifier, another folder).
    for name, text in modules.items():
        lines = [line for line in text.splitlines() if line.startswith("import ")]
        assert len(lines) == len(IMPORT.findall(text)), name


def test_the_page_loads_main_as_a_module() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert '<script type="module" src="/static/js/main.js"></script>' in html
    assert "main.js" in {path.name for path in (STATIC_DIR / "js").glob("*.js")}
