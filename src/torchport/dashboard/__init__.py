"""The dashboard: one web page whose HTML, JavaScript and CSS ship inside the package,
with its chart library (uPlot, from the npm registry: `make vendor`) vendored beside them,
so the page works with no network. The management port serves it (`/dashboard`)."""

from __future__ import annotations

from importlib import resources

from torchport.errors import NotFound

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def asset(name: str) -> tuple[bytes, str]:
    """The bytes and content type of one file of the page (`index.html`, `vendor/…`)."""
    parts = name.split("/")
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if not name or any(p in ("", ".", "..") for p in parts) or suffix not in CONTENT_TYPES:
        raise NotFound(f"no dashboard file {name!r}", field="path")
    file = resources.files(__package__).joinpath("static", *parts)
    if not file.is_file():
        raise NotFound(f"no dashboard file {name!r}", field="path")
    return file.read_bytes(), CONTENT_TYPES[suffix]
