"""The leaderboard site (``ddbench leaderboard --site``): pages from the same records as the Markdown,
byte for byte reproducible, and (slow lane) driven in Debian's chromium through Playwright: row
counts, sorting, filtering, one plot point per row, a screenshot."""
from __future__ import annotations

import os
import re
from html import unescape
from pathlib import Path

import pytest

from ddbench.cli import main
from ddbench.results.leaderboard import pages
from ddbench.results.records import aggregate
from ddbench.results.site import board_lines, markdown_html, task_boards, write_site
from ddbench.results.store import read_results
from test_leaderboard import RECORDS, directed

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ("default", "protocols", "labels", "mnist5k", "staged")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def body_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="(?:ranked|ref|failed)" data-index="\d+".*?</tr>', html)


def test_the_site_shows_the_markdown_numbers(tmp_path):
    written = write_site(RECORDS, tmp_path)
    assert sorted(p.name for p in written) == ["digits.html", "index.html", "site.css", "site.js"]
    html = (tmp_path / "digits.html").read_text()
    rows = aggregate(RECORDS)
    assert len(body_rows(html)) == len(board_lines(task_boards(rows, RECORDS)["digits"])) == 4  # herding, random at ipc 1 and 10, full once
    markdown = pages(rows, RECORDS, "regenerate")["digits.md"]
    for line in markdown.splitlines():
        if line.startswith("| ") and "±" in line and "± std" not in line:  # every Markdown row's rank, label and numbers are on the site
            _rank, label, numbers = [c.strip() for c in line.split("|")[1:4]]
            assert f">{numbers}</td>" in html and f">{label}</td>" in html
    assert 'href="site.css"' in html and 'src="site.js"' in html and "http" not in html.replace("http://www.w3.org", "")
    assert '<a href="digits.html">digits</a>' in (tmp_path / "index.html").read_text()


def test_each_row_says_where_it_comes_from(tmp_path):
    artifacts = tmp_path / "store-artifacts"
    artifacts.mkdir()
    herding = [r for r in RECORDS if r["config"]["distiller"] == "herding"]
    (artifacts / f"digits-herding-{herding[0]['key']}.safetensors").write_bytes(b"x")
    write_site(RECORDS, tmp_path / "site", artifacts=[artifacts])
    [row] = [r for r in body_rows((tmp_path / "site" / "digits.html").read_text()) if 'data-distiller="herding"' in r]
    text = unescape(row)
    assert "<dt>commit</dt><dd>abc</dd>" in text and "<dt>distillation seeds</dt><dd>0 1</dd>" in text and "2 cells" in text
    assert f"<dt>config keys</dt><dd>{herding[0]['key']}, {herding[1]['key']}</dd>" in text
    assert f'<a href="../store-artifacts/digits-herding-{herding[0]["key"]}.safetensors">' in text  # only the file that exists
    assert herding[1]["key"] + ".safetensors" not in text


def test_lower_is_better_tasks_rank_their_way(tmp_path):
    write_site([directed("a", 0.5), directed("b", 0.2)], tmp_path)
    html = (tmp_path / "toy.html").read_text()
    ranked = [re.search(r'data-distiller="(\w)"', r)[1] for r in body_rows(html)]
    assert ranked == ["b", "a"] and '"higher": false' in html and "(lower is better)" in html


def test_the_cli_writes_the_site_alone_and_the_same_bytes_twice(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.json"
    results.write_text(__import__("json").dumps(RECORDS))
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--results", str(results), "--site", "one"]) == 0
    assert main(["leaderboard", "--results", str(results), "--site", "two", "--out", "boards"]) == 0
    assert not (tmp_path / "leaderboards").exists() and (tmp_path / "boards" / "digits.md").is_file()
    for name in ("index.html", "digits.html", "site.js", "site.css"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(results), "--site", "file"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_analysis_pages_become_html(tmp_path):
    md = "# Analyses: digits\n\n## `mixing`\n\n| distiller | cells | acc ↑ |\n|---|---|---|\n| dc | 2 | 0.5 |\n\n![mixing](digits-mixing.png)\n\n- dc: failed: `boom`\n"
    html = "\n".join(markdown_html(md))
    assert "<h2><code>mixing</code></h2>" in html and "<th>acc ↑</th>" in html and "<td>0.5</td>" in html
    assert '<img src="analyses/digits-mixing.png" alt="mixing">' in html and "<code>boom</code>" in html and "---" not in html
    (tmp_path / "analyses").mkdir()
    (tmp_path / "analyses" / "digits.md").write_text(md)
    written = write_site(RECORDS, tmp_path, analysis_pages=[tmp_path / "analyses" / "digits.md"])
    assert tmp_path / "analyses.html" in written and 'href="analyses.html"' in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize("board", BOARDS)
def test_committed_sites_reproduce(board, tmp_path):
    committed = ROOT / "leaderboards" / "site" / board
    write_site(read_results(ROOT / "leaderboards" / board / "results.json").records, tmp_path)
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in tmp_path.iterdir()), (
        f"regenerate: ddbench leaderboard --results leaderboards/{board}/results.json --site leaderboards/site/{board}")
    for page in committed.iterdir():
        assert page.read_bytes() == (tmp_path / page.name).read_bytes(), page.name


# -- in a browser (slow lane) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (never a downloaded browser); skipped when either is
    missing, except in CI (CI=true), where that is a failure."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, missing = None, "the playwright package is not installed (pip install -e '.[test]')"
    else:
        missing = "" if CHROMIUM.is_file() else f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"CI is set but {missing}: .ci/run installs both")
        pytest.skip(missing)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sort_values(page, column: int) -> list[str]:
    return page.eval_on_selector_all(f"#board tbody tr td:nth-child({column})", "cells => cells.map(c => c.dataset.sort)")


@pytest.mark.slow
def test_the_protocols_board_in_a_browser(browser, tmp_path):
    """The committed board of both protocols: its digits page sorts, filters by protocol and budget, and plots."""
    records = read_results(ROOT / "leaderboards" / "protocols" / "results.json").records
    write_site(records, tmp_path / "site")
    expected = board_lines(task_boards(aggregate(records), records)["digits"])
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((tmp_path / "site" / "index.html").as_uri())
    assert page.locator("#tasks tbody tr").count() == 1  # digits
    page.click("text=digits")
    page.wait_for_selector("#plot circle.point")
    assert page.locator("#board tbody tr").count() == len(expected) > 20
    with_value = sum(r.ok for _, r in expected)
    assert page.locator("#plot circle.point").count() == with_value  # one point per row with a result
    assert page.locator("#row-count").text_content() == f"{len(expected)} of {len(expected)} rows shown"

    headers = page.locator("#board thead th")
    column = [headers.nth(i).text_content() for i in range(headers.count())].index("stored params") + 1
    before = sort_values(page, column)
    headers.nth(column - 1).click()
    ascending = sort_values(page, column)
    numbers = [float(x) for x in ascending if x]
    assert ascending != before and numbers == sorted(numbers) and sorted(ascending) == sorted(before)
    headers.nth(column - 1).click()
    assert [float(x) for x in sort_values(page, column) if x] == sorted(numbers, reverse=True)

    page.select_option("select[data-filter=protocol]", "common")
    common = [r for _, r in expected if r.protocol == "common"]
    assert page.locator("#board tbody tr:not([hidden])").count() == len(common) > 0
    assert page.locator("#plot circle.point").count() == sum(r.ok for r in common)
    page.select_option("select[data-filter=budget]", "ipc=10")
    assert page.locator("#board tbody tr:not([hidden])").count() == sum(r.budget == "ipc=10" for r in common)
    page.select_option("select[data-filter=protocol]", "")
    page.select_option("select[data-filter=budget]", "")
    assert page.locator("#plot circle.point").count() == with_value
    title = page.locator("#plot circle.point title").first.text_content()
    assert "stored params" in title and "±" in title
    page.screenshot(path=str(tmp_path / "digits.png"))
    assert (tmp_path / "digits.png").stat().st_size > 10_000 and not errors
