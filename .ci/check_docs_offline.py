"""Checks that the built documentation renders with no network.

    python .ci/check_docs_offline.py [docs/_build/html]

Fails (exit 1, one line per problem) when

* a page loads anything from another host: a ``<script src>``, a stylesheet, icon or
  preload ``<link href>``, an ``<img>``, ``<iframe>``, ``<source>``, ``<embed>`` or
  ``<object>``, an inline script naming a URL, or a stylesheet ``url()``/``@import`` (plain
  ``<a href>`` links are navigation, not loads, and are allowed);
* a page refers to a local script, stylesheet or image that is not in the build;
* a page with maths does not load the bundled MathJax (``_static/mathjax/tex-chtml.js``, as
  ``sphinx-mathjax-offline`` sets it up), or its fonts are missing.

Then, where a Chromium is installed (``$CHROMIUM``, or ``chromium``, ``chromium-browser``,
``google-chrome`` on the PATH), it opens one page with maths headless, every host name
unresolvable, and fails unless MathJax typeset every formula there (no raw ``\\(...\\)`` left
in the page); it saves a screenshot next to the build (``offline-check.png``). Where no
browser is installed it says so and skips that part: CI does not install one (a browser is
a large download from outside the project's registries, for a check the static one above
already covers: no external reference, and the bundled files are there).
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

MATHJAX = "_static/mathjax/tex-chtml.js"
MATHJAX_FONT = "_static/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"
BROWSER_PAGE = "neurons.html"  # a page with inline and display maths
LOADED = {  # element -> the attributes through which a browser fetches something
    "script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
    "embed": ("src",), "object": ("data",), "audio": ("src",), "video": ("src", "poster"),
    "track": ("src",), "input": ("src",),
}
LINK_LOADS = {"stylesheet", "icon", "shortcut", "preload", "prefetch", "modulepreload",
              "apple-touch-icon", "manifest"}


def external(url: str) -> bool:
    url = url.strip()
    if url.startswith(("data:", "about:", "javascript:")):
        return False
    return url.startswith("//") or bool(re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", url))


class Page(html.parser.HTMLParser):
    """The URLs a page loads, whether it has maths, and its inline scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str]] = []  # (what, url)
        self.has_math = False
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for attr in LOADED.get(tag, ()):
            if a.get(attr):
                for url in (a[attr].split(",") if attr == "srcset" else [a[attr]]):
                    self.loads.append((f"<{tag} {attr}>", url.strip().split(" ")[0]))
        if tag == "link" and LINK_LOADS & set(a.get("rel", "").lower().split()) and a.get("href"):
            self.loads.append((f"<link rel={a['rel']}>", a["href"]))
        if "math" in a.get("class", "").split():
            self.has_math = True
        self._in_script = tag == "script" and not a.get("src")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_scripts.append(data)


def local_target(page: Path, url: str) -> Path:
    return (page.parent / unquote(urlsplit(url).path)).resolve()


def check_css(path: Path, root: Path) -> list[str]:
    problems = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for match in re.finditer(r"@import\s+(?:url\()?\s*['\"]?([^'\")\s;]+)|url\(\s*['\"]?([^'\")]+)",
                             text):
        url = match.group(1) or match.group(2)
        if external(url):
            problems.append(f"{path.relative_to(root)}: stylesheet loads {url}")
    return problems


def static_check(root: Path) -> tuple[list[str], list[Path]]:
    problems, math_pages, sheets = [], [], set()
    pages = sorted(root.rglob("*.html"))
    if not pages:
        return [f"no HTML pages under {root}"], []
    for page in pages:
        name = page.relative_to(root)
        parser = Page()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for what, url in parser.loads:
            if external(url):
                problems.append(f"{name}: {what} loads {url}")
            elif not url.startswith(("data:", "#")) and url:
                target = local_target(page, url)
                if not target.exists():
                    problems.append(f"{name}: {what} refers to {url}, which is not in the build")
                elif target.suffix == ".css":
                    sheets.add(target)
        for script in parser.inline_scripts:
            for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s'\"]*", script):
                problems.append(f"{name}: an inline script names {url}")
        if parser.has_math:
            math_pages.append(page)
            wanted = local_target(page, os.path.relpath(root / MATHJAX, page.parent))
            if not any(local_target(page, url) == wanted for _, url in parser.loads
                       if not external(url)):
                problems.append(f"{name}: has maths but does not load {MATHJAX}")
    for sheet in sorted(sheets):
        problems += check_css(sheet, root)
    for needed in (MATHJAX, MATHJAX_FONT):
        if math_pages and not (root / needed).exists():
            problems.append(f"{needed} is missing: the maths cannot render offline")
    return problems, math_pages


def find_browser() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def browser_check(browser: str, page: Path, shot: Path) -> list[str]:
    """Opens ``page`` with no name resolution; MathJax must have typeset every formula."""
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=20000", "--window-size=1100,1400"]
    with tempfile.TemporaryDirectory() as profile:
        base.append(f"--user-data-dir={profile}")
        url = page.resolve().as_uri()
        try:
            dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True,
                                 timeout=120).stdout
            subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True,
                           timeout=120)
        except subprocess.TimeoutExpired:
            return [f"{browser} did not finish rendering {page.name} in 120 s"]
    if "<html" not in dom:
        return [f"{browser} printed no page for {page.name}"]
    raw = len(re.findall(r'class="math[^"]*"[^>]*>\s*(\\\(|\\\[|\$)', dom))
    typeset = dom.count("<mjx-container")
    problems = []
    if typeset == 0 or raw:
        problems.append(f"{page.name} offline in {Path(browser).name}: {typeset} formulas typeset, "
                        f"{raw} left as raw TeX")
    else:
        print(f"browser: {page.name} offline in {Path(browser).name}: {typeset} formulas "
              f"typeset, none left raw; screenshot {shot}")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "docs/_build/html").resolve()
    problems, math_pages = static_check(root)
    print(f"static: {len(list(root.rglob('*.html')))} pages, {len(math_pages)} with maths, "
          f"{len(problems)} problems")
    browser = find_browser()
    page = root / BROWSER_PAGE
    if browser is None:
        print("browser: skipped, no Chromium installed (set CHROMIUM=/path/to/chrome to run it)")
    elif not page.exists():
        problems.append(f"{BROWSER_PAGE} is missing from the build")
    else:
        problems += browser_check(browser, page, root.parent / "offline-check.png")
    for problem in problems:
        print("error:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
