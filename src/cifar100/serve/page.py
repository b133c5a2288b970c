"""GET /: the page a person uses to classify images with the served model.

page.html is one self-contained file (inline CSS and JS, no framework, no build step): it reads
the model card from /model and sends each image to /predict in a request of its own. It is read
once from the package and served with a Content-Security-Policy that lets it run only its own
script and style and talk only to this server, so the page works offline and stays that way.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


def page_router() -> APIRouter:
    """The router of GET /. The page asks /model for what it shows: it needs no service."""
    html = files("cifar100").joinpath("serve/page.html").read_text(encoding="utf-8")
    headers = {"Content-Security-Policy": content_policy(html), "Cache-Control": "no-cache"}
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    return router


def content_policy(html: str) -> str:
    """A CSP allowing the page's inline <script> and <style> by their hashes (nothing injected
    runs), fetches to this origin, and images from local files (blob:) and its icon (data:)."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
    )
