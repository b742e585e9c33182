"""What the build links in. mistralrs can run a web search itself (a query
the model wrote from the prompt, sent to DuckDuckGo, and the pages it names
fetched): an edge worker must never have that, so the workspace builds
mistralrs-core without its `web-search` feature. This fails if a change of
features (a default turned back on, a crate that enables it) brings the
search back."""

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The web search's own crates: the result-page parsers and the ranking.
WEB_SEARCH_CRATES = {"scraper", "html2text", "html5ever", "bm25"}


def _tree(*args):
    out = subprocess.run(
        ["cargo", "tree", "--offline", "--workspace", "--prefix", "none", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return out.splitlines()


def test_no_web_search_in_the_build():
    crates = {line.split()[0] for line in _tree("-e", "normal,build", "--format", "{p}") if line}
    assert "mistralrs-core" in crates, "the tree does not list the engine"
    assert not crates & WEB_SEARCH_CRATES, sorted(crates & WEB_SEARCH_CRATES)


def test_mistralrs_core_is_built_without_its_web_search_feature():
    lines = _tree("-e", "features", "-i", "mistralrs-core")
    enabled = [l for l in lines if l.startswith("mistralrs-core feature")]
    assert not [l for l in enabled if '"web-search"' in l or '"default"' in l], enabled
