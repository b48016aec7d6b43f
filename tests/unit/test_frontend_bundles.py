"""The dashboard's two plotly.js bundles are one version (major.minor): a page may switch from the cartesian one to the full one."""

import re
from importlib.resources import files

from tests.conftest import ROOT


def version(text: str) -> str:
    """major.minor: patch releases draw the same figures."""
    return re.search(r"plotly\.js(?: \([^)]*\))? v(\d+\.\d+)\.\d+", text).group(1)


def test_the_vendored_cartesian_bundle_matches_the_python_packages_full_one():
    full = (files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")[:300]
    cartesian = (ROOT / "frontend" / "vendor" / "plotly-cartesian.min.js").read_text(encoding="utf-8")[:300]
    assert version(full) == version(cartesian), "update frontend/vendor: npm pack plotly.js-cartesian-dist-min@<version>"
