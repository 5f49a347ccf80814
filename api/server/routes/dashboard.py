"""The dashboard: a static single-page app (hash routes: #/, #/jobs/ID, #/compare?ids=1,2, #/submit) and the
example specs it offers.

Everything is served from this package (uPlot is vendored under static/vendor), so the page works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The repository's examples/ (the specs the README walks through), next to the package in a source checkout
# and in the Docker image; an installed wheel without them offers no examples rather than failing.
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
EXAMPLE_SUFFIXES = (".yaml", ".yml", ".json")

router = APIRouter(include_in_schema=False)
# Mounted on the router itself so that `app.include_router(router)` is all the app needs.
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class Example(BaseModel):
    name: str
    text: str


@router.get("/")
def index() -> FileResponse:
    # no-cache: the page revalidates, so a new version of the app is picked up on reload.
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


@router.get("/ui/examples")
def examples() -> list[Example]:
    if not EXAMPLES_DIR.is_dir():
        return []
    files = sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix in EXAMPLE_SUFFIXES and p.is_file())
    return [Example(name=p.stem, text=p.read_text()) for p in files]
