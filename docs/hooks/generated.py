"""MkDocs hook: the pages that are generated, so each fact has one source.

- ``index.md`` is the repository's README.md (its ``docs/...`` links made relative to the site);
- ``changelog.md`` is CHANGELOG.md;
- ``reference/cli.md``, until the generated CLI reference is in ``docs/``, is a short page naming ``--help``;
- the model zoo table on ``models.md`` is ``glmscore models --table`` (``zoo_table()``, from models/cards.yaml),
  put in place of the page's marker line at build time.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

from glmscore.models.cards import zoo_table

ROOT = Path(__file__).resolve().parents[2]
ZOO_MARKER = "<!-- zoo-table: generated from models/cards.yaml by docs/hooks/generated.py at build time -->"
CLI_PAGE = "reference/cli.md"
CLI_STUB = """# Command-line reference

Every command prints its flags, grouped by the backend or benchmark that declares them:
`glmscore --help`, `glmscore score --help`, `glmscore models CARD`.
"""


def readme_as_index(text: str) -> str:
    """README.md as the site's home page: links into docs/ become site-relative, CHANGELOG.md its page."""
    text = re.sub(r"\]\(docs/", "](", text)
    return text.replace("](CHANGELOG.md)", "](changelog.md)")


def on_files(files, config):
    generated = {"index.md": readme_as_index((ROOT / "README.md").read_text()),
                 "changelog.md": (ROOT / "CHANGELOG.md").read_text()}
    if files.get_file_from_path(CLI_PAGE) is None:
        generated[CLI_PAGE] = CLI_STUB
    for path, content in generated.items():
        old = files.get_file_from_path(path)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if ZOO_MARKER not in markdown:
        return markdown
    return markdown.replace(ZOO_MARKER, zoo_table())
