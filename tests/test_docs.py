"""docs/configuration.md documents exactly the keys the code accepts: a new key cannot ship undocumented.

The keys come from the specs the programs register (livedata.config.known_keys(), the same union that refuses
unknown keys in a config file) and from the application keys (livedata.live_data.FIELDS); the documented ones
are the first cells of the reference's tables. Links between the docs must resolve too.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from livedata.config import DictOf, known_keys
from livedata.live_data import FIELDS, PREFIX

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "configuration.md"
ROW_KEY = re.compile(r"^\| `([a-z_][a-z0-9_.<>]*)` \|", re.MULTILINE)
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#([^)]+))?\)")


def spec_keys(spec: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted key a spec accepts, a DictOf level written as ``<name>`` as the reference writes it."""
    for name, rule in spec.items():
        if isinstance(rule, DictOf):
            yield from spec_keys(rule.spec, f"{prefix}{name}.<name>.")
        elif isinstance(rule, Mapping):
            yield from spec_keys(rule, f"{prefix}{name}.")
        else:
            yield prefix + name


def accepted_keys() -> set[str]:
    return set(spec_keys(known_keys())) | {f"{PREFIX}<name>.{field}" for field in FIELDS}


def documented_keys() -> set[str]:
    return set(ROW_KEY.findall(REFERENCE.read_text()))


def test_the_spec_walk_finds_the_keys_it_must():
    keys = accepted_keys()
    assert {"zookeeper.hosts", "zookeeper.tls.verify", "nodes.<name>.dest", "trees.<name>.format"} <= keys
    assert {"writer.compress", "watcher.state_dir", "secrets.path", "live_data.<name>.tree"} <= keys


def test_every_key_the_code_accepts_is_in_the_configuration_reference():
    missing = sorted(accepted_keys() - documented_keys())
    assert not missing, (
        f"docs/configuration.md has no table row for {', '.join(missing)}: the code accepts "
        f"{'this key' if len(missing) == 1 else 'these keys'}; add a row '| `KEY` | meaning (unit) | default | "
        "programs that read it |' to its Keys table"
    )


def test_the_configuration_reference_documents_no_key_the_code_refuses():
    unknown = sorted(documented_keys() - accepted_keys())
    assert not unknown, f"docs/configuration.md documents keys no livedata program accepts: {', '.join(unknown)}"


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_links_between_the_docs_resolve(path: Path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    for target, anchor in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        linked = (path.parent / target).resolve()
        assert linked.is_file(), f"{path.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{path.name} links to {target}#{anchor}: no such heading"


def test_the_docs_speak_to_users_not_about_how_the_work_was_organised():
    for path in markdown_files():
        text = path.read_text()
        for word in (r"\bsession\b of work", r"\bissue \d+", r"\bthis session\b", r"\bthe issue's\b"):
            assert not re.search(word, text, re.IGNORECASE), f"{path.name}: {word!r} is work-log wording"
