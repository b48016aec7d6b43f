"""The gallery's index: what each picture shows and what it measured (docs/gallery/index.json), as a page
(docs/gallery/index.md) and as the README's gallery, which a test holds equal to the committed index."""

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "gallery"
INDEX = DOCS / "index.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- gallery: written by make gallery from docs/gallery/index.json -->", "<!-- /gallery -->"


def entry_lines(entry: dict[str, Any], images: str) -> list[str]:
    spec = f"examples/gallery/{entry['spec']}"
    return [
        f"**{entry['title']}** ({entry['paper']}): {entry['says']}. Spec: [`{spec}`]({spec}).",
        "",
        f"![{entry['title']}]({images}{entry['name']}.png)",
        "",
    ]


def readme_section(index: dict[str, Any]) -> str:
    lines = [BEGIN, ""]
    for entry in index["phenomena"]:
        lines += entry_lines(entry, "docs/gallery/")
    lines.append(END)
    return "\n".join(lines)


def page(index: dict[str, Any]) -> str:
    lines = [
        "# Gallery of reproduced phenomena",
        "",
        f"Made by `make gallery` on {index['machine']}: its jobs ran {index['total_seconds'] / 60:.1f} minutes in all, on two "
        f"workers; the last run took {index['last_run_seconds'] / 60:.1f} minutes from start to end. The numbers are in index.json.",
        "",
    ]
    for entry in index["phenomena"]:
        lines += [f"## {entry['title']}", ""] + entry_lines(entry, "") + [f"Its runs took {entry['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def write(index: dict[str, Any]) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    INDEX.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    (DOCS / "index.md").write_text(page(index))
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + readme_section(index) + text[end:])


def merged(old: dict[str, Any] | None, new: list[dict[str, Any]], order: list[str], machine: str, seconds: float) -> dict[str, Any]:
    """The index with `new` entries replacing their namesakes (a run of some phenomena keeps the others)."""
    kept = {e["name"]: e for e in (old or {}).get("phenomena", [])} | {e["name"]: e for e in new}
    entries = [kept[name] for name in order if name in kept]
    total = round(sum(e["seconds"] for e in entries), 1)
    return {"machine": machine, "total_seconds": total, "last_run_seconds": round(seconds, 1), "phenomena": entries}
