"""The demo page (service/http/web: plain HTML, CSS and JavaScript, no build step), at /ui/."""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"

web_app = StaticFiles(directory=WEB_DIR, html=True)
