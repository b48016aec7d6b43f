"""Figures to PNG: the API's figure descriptions (what the dashboard draws) drawn by plotly.js, shipped inside the
plotly package (nothing is downloaded), in Debian's headless Chromium, side by side, one screenshot."""

import json
import os
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("DYNASCOPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--no-first-run"]
PANEL_WIDTH, PANEL_HEIGHT = 620, 400
STYLE = {
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "font": {"family": "DejaVu Sans, sans-serif", "size": 12},
    "title": {"font": {"size": 12}},
    "xaxis": {"gridcolor": "#e5e5e5", "zeroline": False},
    "yaxis": {"gridcolor": "#e5e5e5", "zeroline": False},
}


def _page(figures: list[dict[str, Any]], plotly_js: str) -> str:
    panels = "".join(f'<div id="p{i}" style="width:{PANEL_WIDTH}px;height:{PANEL_HEIGHT}px"></div>' for i in range(len(figures)))
    return f"""<!doctype html><html><head><meta charset="utf-8"><script>{plotly_js}</script></head>
<body style="margin:0;background:white"><div id="gallery" style="display:flex;gap:8px;padding:8px;width:max-content">{panels}</div>
<script>
const figures = {json.dumps(figures)};
const style = {json.dumps(STYLE)};
window.drawn = Promise.all(figures.map((f, i) => {{
  const layout = {{...style, ...f.layout, width: {PANEL_WIDTH}, height: {PANEL_HEIGHT},
    title: {{...style.title, ...(f.layout.title || {{}})}},
    xaxis: {{...style.xaxis, ...(f.layout.xaxis || {{}})}}, yaxis: {{...style.yaxis, ...(f.layout.yaxis || {{}})}}}};
  return Plotly.newPlot("p" + i, f.data, layout, {{staticPlot: true}});
}}));
</script></body></html>"""


class Renderer:
    """One Chromium for the whole gallery."""

    def __enter__(self) -> "Renderer":
        from playwright.sync_api import sync_playwright
        from plotly.offline import get_plotlyjs

        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        self._plotly_js = get_plotlyjs()
        return self

    def __exit__(self, *exc: object) -> None:
        self._browser.close()
        self._playwright.stop()

    def png(self, figures: list[dict[str, Any]], path: Path) -> None:
        page = self._browser.new_page(viewport={"width": len(figures) * (PANEL_WIDTH + 8) + 16, "height": PANEL_HEIGHT + 16})
        try:
            page.set_content(_page(figures, self._plotly_js))
            page.evaluate("window.drawn")
            page.locator("#gallery").screenshot(path=str(path))
        finally:
            page.close()
