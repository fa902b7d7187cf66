"""mkdocs hook (mkdocs.yml `hooks:`): links from docs/ to files elsewhere in the repository.

On GitHub, `[README](../automodel-plugins/automodel-fsdp2/README.md)` works; in the built site that
file does not exist. This hook checks that each such target exists in the repository (a missing one
is a warning, so `mkdocs build --strict` fails on it) and renders it as its repository path in code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.repo_links")
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((\.\./[^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    source = (docs / page.file.src_path).parent

    def replace(m: re.Match[str]) -> str:
        target = (source / m.group(2)).resolve()
        if target.is_relative_to(docs):
            return m.group(0)  # a docs page: mkdocs validates it
        if not target.exists():
            log.warning("%s: link to %s, which does not exist in the repository", page.file.src_path, m.group(2))
            return m.group(0)
        return f"{m.group(1)} (`{target.relative_to(repo)}`)"

    return LINK.sub(replace, markdown)
