"""The documentation: README.md and the docs site in docs/ (issue 39).

- The site builds with ``mkdocs build --strict`` (a broken link, anchor or API reference fails), and the built
  HTML, read with an HTML parser, has every internal link, anchor and image (non-empty) in place and the
  model zoo generated from the cards.
- Every fenced block names its language, and every command block (bash, python) says how it is checked, in an
  HTML comment on the line above it, ``<!-- docs-test: KIND (why) -->``:

  ``run``       run here, in a scratch folder beside ``../shared``: the README's first set-up command's
                ``glmscore demo --out demo_out`` first, then every run block in order (README, then the pages),
                all in one interpreter, so one local Ray cluster serves them all; a ``(needs ../shared/data)``
                block is skipped where the data is absent. An ``output`` block after a run block is what it
                prints: each of its lines must be printed (``output (why)``: the numbers may differ, e.g.
                because the test runs the demo at 30 cassettes instead of 300).
  ``setup``     the two set-up commands: the README's and the getting-started page's are the same, and the
                second is the one .ci/run runs.
  ``parse``     needs a GPU, a cluster or a cloud account: each ``glmscore`` command in it (also after
                ``ray job submit ... --``) parses with the CLI, and the files of ``cluster/`` it names exist.
  ``synopsis``  a usage summary with placeholders (``M``, ``a|b``, ``[--flag]``): its commands exist and every
                ``--flag`` it names is one of that command's flags.
  ``skip``      python only, with the reason (a package glmscore does not install, hub weights).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
MARK = re.compile(r"<!-- docs-test: ([a-z-]+)(?: \((.+)\))? -->")
COMMAND_LANGS = {"bash", "sh", "shell", "console", "python"}
# pages written by a generator from the code, not by hand: their blocks are `--help` text that the generator's own
# test keeps equal to the parser
GENERATED = {"docs/reference/cli.md"}
KINDS = {"bash": {"run", "setup", "parse", "synopsis"}, "python": {"run", "skip"}}


@dataclass
class Block:
    file: str
    line: int
    lang: str
    kind: str | None
    why: str | None
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    """README.md, then the site's pages in nav order, then any page the nav does not list."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def walk(items):
        for item in items:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from (walk(value) if isinstance(value, list) else [value])

    pages = [ROOT / "docs" / p for p in walk(nav) if (ROOT / "docs" / p).is_file()]
    rest = sorted(p for p in (ROOT / "docs").rglob("*.md") if p not in pages and "hooks" not in p.parts)
    return [p for p in (ROOT / "README.md", *pages, *rest) if p.relative_to(ROOT).as_posix() not in GENERATED]


def blocks() -> list[Block]:
    found = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            if lines[i].startswith("```"):
                lang = lines[i][3:].strip().split(" ")[0]
                mark = MARK.fullmatch(lines[i - 1].strip()) if i else None
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                found.append(Block(str(path.relative_to(ROOT)), i + 1, lang, mark and mark.group(1),
                                   mark and mark.group(2), "\n".join(lines[i + 1:end])))
                i = end
            i += 1
    return found


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block as word lists: line continuations joined, comments dropped, `&&` split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "&", "||"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def glmscore_args(words: list[str]) -> list[str] | None:
    """The words after `glmscore` when the command runs glmscore (also `python -m glmscore`, behind environment
    variables, or as a `ray job submit ... -- ENTRYPOINT`), else None."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    if words[:3] == ["ray", "job", "submit"] and "--" in words:
        return glmscore_args(words[words.index("--") + 1:])
    if words and words[0].split("/")[-1] == "glmscore":
        return words[1:]
    if len(words) >= 3 and words[0].split("/")[-1] in ("python", "python3") and words[1:3] == ["-m", "glmscore"]:
        return words[3:]
    return None


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from glmscore.pipelines.cli import build_parser

    return build_parser()


def test_every_block_names_its_language_and_every_command_block_how_it_is_checked():
    problems = []
    for block in blocks():
        if not block.lang:
            problems.append(f"{block}: a fenced block without a language (text, bash, python, yaml...)")
        elif block.lang in COMMAND_LANGS:
            allowed = KINDS["python" if block.lang == "python" else "bash"]
            if block.kind not in allowed:
                problems.append(f"{block}: a {block.lang} block needs `<!-- docs-test: KIND -->` on the line above, "
                                f"KIND one of {sorted(allowed)} (got {block.kind})")
            elif block.kind in ("parse", "synopsis", "skip") and not block.why:
                problems.append(f"{block}: `{block.kind}` says why it is not run: `<!-- docs-test: {block.kind} (why) -->`")
        elif block.kind not in (None, "output"):
            problems.append(f"{block}: a {block.lang} block is not checked as `{block.kind}`")
    assert not problems, "\n".join(problems)


def test_the_set_up_commands_are_the_ones_ci_runs():
    setups = [b for b in blocks() if b.kind == "setup"]
    assert {b.file for b in setups} == {"README.md", "docs/getting-started.md"}, setups
    assert len({b.text for b in setups}) == 1, "README.md and docs/getting-started.md show different set-up commands"
    lines = [line for line in setups[0].text.splitlines() if not line.startswith("#")]
    assert lines == ["cluster/local/install.sh && .venv/bin/glmscore demo --out demo_out",
                     "cluster/local/install.sh && .venv/bin/python -m pytest -q -n 2 tests"], lines
    assert lines[1] in (ROOT / ".ci" / "run").read_text().splitlines()
    assert os.access(ROOT / "cluster" / "local" / "install.sh", os.X_OK)


def _subcommand(parser: argparse.ArgumentParser, args: list[str]) -> tuple[argparse.ArgumentParser, list[str], int]:
    depth = 0
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not args or args[0] not in subs[0].choices:
            return parser, args, depth
        parser, args, depth = subs[0].choices[args[0]], args[1:], depth + 1


def test_blocks_that_need_a_gpu_or_a_cluster_parse(parser, capsys):
    checked = 0
    for block in (b for b in blocks() if b.kind == "parse"):
        for words in shell_commands(block.text):
            for path in re.findall(r"\bcluster/[\w./-]+\.(?:yaml|sh)\b", " ".join(words)):
                assert (ROOT / path).is_file(), f"{block}: {path} does not exist"
            args = glmscore_args(words)
            if args is None:
                continue
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{block}: `glmscore {shlex.join(args)}` does not parse: {capsys.readouterr().err.strip()}")
            checked += 1
    assert checked >= 8, checked


def test_synopsis_blocks_name_real_commands_and_flags(parser):
    checked = 0
    for block in (b for b in blocks() if b.kind == "synopsis"):
        for words in shell_commands(block.text):
            args = glmscore_args(words)
            if args is None:
                continue
            command, rest, depth = _subcommand(parser, args)
            assert depth >= 1, f"{block}: `glmscore {shlex.join(args)}` names no command"
            for word in rest:
                flag = re.match(r"^\[?(--[A-Za-z][\w-]*)", word)
                if flag:
                    assert flag.group(1) in command._option_string_actions, \
                        f"{block}: `{flag.group(1)}` is not a flag of `glmscore {' '.join(args[:depth])}`"
            checked += 1
    assert checked >= 15, checked


def _numbers_vary(line: str) -> str:
    """A pattern for an output line whose numbers depend on the size of the demo: its words must be printed, in
    order, and its numbers may differ."""
    number = r"-?[0-9][0-9,]*(?:\.[0-9]+)?(?:e-?[0-9]+)?"
    return r"\s+".join(number.join(re.escape(p) for p in re.split(number, word)) for word in line.split())


RUNNER = r"""
import json, os, shlex, sys, time
from glmscore.pipelines.cli import main
for step in json.load(open(sys.argv[1])):
    print(f"### {step['where']}", flush=True)
    started = time.monotonic()
    if "argv" in step:
        code = main(step["argv"])
        if code != 0:
            sys.exit(f"{step['where']}: `glmscore {shlex.join(step['argv'])}` exited {code}")
    else:
        exec(compile(step["python"], step["where"], "exec"), {"__name__": "__docs__"})
    print(f"### {step['where']} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
"""


@pytest.mark.ray
@pytest.mark.slow
def test_run_blocks_run_and_print_what_the_docs_show(tmp_path):
    """One interpreter runs the demo and then every run block (one local Ray cluster for all of them)."""
    work = tmp_path / "work"
    work.mkdir()
    if SHARED_DATA.is_dir():
        (tmp_path / "shared").symlink_to(SHARED_DATA.parent)  # the docs' `../shared/data`
    all_blocks = blocks()
    setup = next(b for b in all_blocks if b.kind == "setup")
    demo = next(w for w in shell_commands(setup.text) if glmscore_args(w) and glmscore_args(w)[0] == "demo")
    # the demo at 30 cassettes, not 300: the same chain in a tenth of the rows (the suite's time budget)
    steps = [{"where": f"{setup} (set-up command 1)", "argv": [*glmscore_args(demo), "--cassettes", "30"]}]
    expected: list[tuple[Block, str]] = []
    skipped = []
    last_run = None
    for block in all_blocks:
        if block.kind == "output" and last_run is not None:
            expected += [(block, _numbers_vary(line.rstrip()) if block.why else re.escape(line.rstrip()))
                         for line in block.text.splitlines() if line.strip()]
        if block.kind != "run":
            continue
        last_run = None
        if block.why and "shared/data" in block.why and not SHARED_DATA.is_dir():
            skipped.append(str(block))
            continue
        last_run = block
        if block.lang == "python":
            steps.append({"where": str(block), "python": block.text})
            continue
        for words in shell_commands(block.text):
            args = glmscore_args(words)
            assert args is not None, f"{block}: a run block runs glmscore commands only: {shlex.join(words)}"
            steps.append({"where": str(block), "argv": args})
    assert len(steps) >= 8, steps
    plan = tmp_path / "steps.json"
    plan.write_text(json.dumps(steps))
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(plan)], cwd=work, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(proc.stderr[-6000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = proc.stdout
    missing = [f"{block}: {line}" for block, line in expected if not re.search(line, printed)]
    assert not missing, "the docs show output that the commands no longer print:\n" + "\n".join(missing)
    for report in ("nullsette_report/report.html", "variant_report/report.html") + \
            (() if skipped else ("nabench_report/report.html",)):
        assert (work / report).stat().st_size > 0, report
    if skipped:
        pytest.skip(f"ran all but {skipped}: ../shared/data is absent")


# ---------------------------------------------------------------- the site


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for attr in ("href", "src"):
            if attrs.get(attr) and tag in ("a", "img", "link", "script"):
                self.refs.append((tag, attrs[attr]))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_the_site_builds_strict_and_every_link_anchor_and_image_is_there(site):
    pages = {p: _Page() for p in site.rglob("*.html")}
    for path, page in pages.items():
        page.feed(path.read_text(encoding="utf-8"))
    problems = []
    for path, page in pages.items():
        for tag, url in page.refs:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith("mailto:"):
                continue
            base = site if parts.path.startswith("/") else path.parent  # 404.html's links are site-absolute
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(site)}: <{tag}> {url}"
            if not target.is_file():
                problems.append(f"{where}: no such file")
            elif tag == "img" and target.stat().st_size == 0:
                problems.append(f"{where}: an empty image")
            elif parts.fragment and target in pages and unquote(parts.fragment) not in pages[target].ids:
                problems.append(f"{where}: no such anchor")
    assert not problems, "\n".join(problems)
    for page in ("getting-started", "tutorials/nullsette", "tutorials/nabench", "tutorials/variants", "clusters",
                 "models", "output-format", "statistics", "security", "performance", "troubleshooting",
                 "reference/cli", "reference/api", "changelog"):
        assert (site / page / "index.html").is_file(), page
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'src="img/nullsette-report.png"' in home  # the README is the home page, its picture with it
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert all(f'id="pipelines.api.{name}"' in api for name in ("score", "embed", "analyze", "sweep"))


def test_the_model_zoo_page_is_the_cards(site):
    from glmscore.models.cards import shipped_cards

    zoo = (site / "models" / "index.html").read_text(encoding="utf-8")
    missing = [card for card in shipped_cards() if f"<code>{card}</code>" not in zoo]
    assert not missing, f"the built model zoo lacks the cards {missing}"


# ---------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    """A headless-capable Chromium: one on the PATH, else Debian's, installed here where the tests run as root with
    apt (CI's machine; about 30 s once). The suite's one system package, installed by the test that needs it rather
    than by cluster/local/install.sh, which also sets up a user's demo run."""
    def found() -> str | None:
        return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(name)), None)

    if found() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
            if subprocess.run(step, env=env, capture_output=True, timeout=900).returncode != 0:
                break
    return found()


async def _browse(site_url: str, browser_ws: str, pages: list[str]) -> dict:
    """Open each page in headless Chromium over the DevTools protocol; say which images loaded, then follow the
    page's "next" link in the footer, as a reader does, and say where it led."""
    import aiohttp

    seen = {}
    async with aiohttp.ClientSession() as http:
        devtools = browser_ws.split("/devtools/")[0].replace("ws://", "http://")
        async with http.put(f"{devtools}/json/new?about:blank") as response:
            page_ws = (await response.json())["webSocketDebuggerUrl"]
        async with http.ws_connect(page_ws, max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method, **params):
                msg_id = next(ids)
                await ws.send_json({"id": msg_id, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json(timeout=60)
                    if msg.get("id") == msg_id:
                        assert "error" not in msg, msg
                        return msg.get("result", {})

            async def load(url):
                await call("Page.navigate", url=url)
                for _ in range(200):  # the load event, then every image settled
                    state = await call("Runtime.evaluate", returnByValue=True, expression=(
                        "document.readyState === 'complete' && [...document.images].every(i => i.complete)"))
                    if state["result"].get("value"):
                        return
                    await asyncio.sleep(0.05)

            await call("Page.enable")
            for page in pages:
                await load(f"{site_url}/{page}")
                got = await call("Runtime.evaluate", returnByValue=True, expression="""({
                    title: document.querySelector('h1') && document.querySelector('h1').textContent,
                    images: [...document.querySelectorAll('article img')].map(i => [i.src, i.naturalWidth]),
                    nav: document.querySelectorAll('nav.md-nav a.md-nav__link').length,
                    next: (document.querySelector('a.md-footer__link--next') || {}).href || null})""")
                result = got["result"]["value"]
                if result["next"]:
                    await call("Runtime.evaluate", expression="document.querySelector('a.md-footer__link--next').click()")
                    for _ in range(200):
                        where = await call("Runtime.evaluate", returnByValue=True, expression=(
                            "document.readyState === 'complete' ? location.href : ''"))
                        if where["result"].get("value") == result["next"]:
                            break
                        await asyncio.sleep(0.05)
                    result["followed"] = where["result"].get("value")
                seen[page] = result
    return seen


def test_the_tutorials_open_in_a_real_browser_with_their_figures_and_navigation(site, tmp_path):
    """Headless Chromium (Debian's `chromium`, installed by ``_chromium`` where the tests run as root)
    opens the home page and the tutorials from a local HTTP server: every figure has loaded (a non-zero natural
    width), the navigation is there, and the footer's "next" link leads to the next page."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine, and Debian's could not be installed (needs root and apt); "
                    "test_the_site_builds_strict_and_every_link_anchor_and_image_is_there checks the HTML instead")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("DevTools listening on "):
                browser_ws = line.split(" on ", 1)[1].strip()
                break
        else:
            pytest.fail("chromium did not open its DevTools port")
        pages = ["", "tutorials/nullsette/", "tutorials/nabench/", "tutorials/variants/"]
        seen = asyncio.run(_browse(f"http://127.0.0.1:{server.server_address[1]}", browser_ws, pages))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.shutdown()
    for page in pages:
        got = seen[page]
        assert got["title"] and got["nav"] >= 15, (page, got)
        assert all(width > 0 for _, width in got["images"]), (page, got["images"])
        assert got["next"] and got["followed"] == got["next"], (page, got)
    assert [src for src, _ in seen[""]["images"]][-1:] and seen["tutorials/nullsette/"]["images"], seen
