"""Check the internal links of the built site offline: every relative ``href``/``src`` of every HTML page must
name a file of the build, and every ``#fragment`` an id on the page it points to. External links (with a
scheme) are not followed: the build machine has no network. Exit status 1 with one line per broken link.

    python docs/check_links.py docs/_build/html
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and a.get("rel") in ("preconnect", "dns-prefetch")):
                self.links.append(a[key])


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p


def broken_links(root: Path) -> list[str]:
    pages = {p: _parse(p) for p in sorted(root.rglob("*.html"))}
    bad = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                bad.append(f"{page.relative_to(root)}: {link} (no such file)")
                continue
            frag = unquote(parts.fragment)
            if frag and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if frag not in ids:
                    bad.append(f"{page.relative_to(root)}: {link} (no id {frag!r} on {target.relative_to(root)})")
    return bad


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "docs/_build/html").resolve()
    if not (root / "index.html").exists():
        print(f"check_links: no built site at {root} (run ./run.sh docs)", file=sys.stderr)
        return 2
    bad = broken_links(root)
    for line in bad:
        print(f"broken link: {line}", file=sys.stderr)
    n = len(list(root.rglob("*.html")))
    print(f"check_links: {n} pages, {'no broken internal link' if not bad else f'{len(bad)} broken internal links'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
