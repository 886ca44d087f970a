"""The leaderboard site (``ddbench leaderboard --site DIR``): static HTML from the same records as the
Markdown boards, for any static host or the file system (no server, no network).

``index.html`` lists the tasks with their budgets, protocols and label regimes; ``<task>.html``
holds one table of every board of the task (both protocols, every budget tier and label regime),
with the ranks, numbers and reference rows of each board's facts (:func:`ddbench.results.board.board`,
so the site and the Markdown show the same numbers, formatted alike), a column of per-row provenance
(commit, torch, device, seeds, recipe, cell keys) and links to saved artifacts when they exist;
``analyses.html`` renders the analysis pages when analyses ran. ``site.js`` (sorting, filtering
and the SVG plot of the metric against stored parameters with the Pareto front) and ``site.css``
ship with ddbench (``ddbench/results/site_assets``) and are copied beside the pages. Each page
embeds its rows as JSON, so nothing is fetched. The output depends only on its inputs: building
twice gives the same bytes.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from ddbench.results.board import (
    DD_RANKING_WEIGHT,
    REGIME_TEXT,
    TEACHER_ROW,
    TRAINED,
    Board,
    all_boards,
    board_columns,
    budget_key,
    finished,
    ranked_by,
    record_protocol,
    regimes_of,
)
from ddbench.results.leaderboard import dd_ranking_fact, table_line
from ddbench.results.records import COLUMNS, Row, aggregate, footnote, settings
from ddbench.vocab import FULL

ASSETS = ("site.js", "site.css")
FILTERS = ("distiller", "protocol", "regime", "budget")
"""The columns a board's table filters by (a select each)."""


def _number(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{escape(title)}</title>",
                      '<link rel="stylesheet" href="site.css">', "</head>", "<body>", *body,
                      '<script src="site.js"></script>', "</body>", "</html>", ""])


def _signature(record: dict[str, Any]) -> tuple[str, str, str, str]:
    c = record["config"]
    return c["task"], c["distiller"], c["budget"] or FULL, json.dumps(settings(c), sort_keys=True, default=str)


def _records_of(row: Row, by_row: dict[tuple[str, str, str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The finished records a row aggregates (a reference row: those of the row it is derived from)."""
    distiller = "full" if row.distiller == TRAINED else row.distiller
    found = by_row.get((row.task, distiller, row.budget, row.signature or ""), [])
    if row.distiller == TEACHER_ROW:  # the records of the row whose teacher it is (the one with its settings, any distiller)
        found = [r for key, recs in by_row.items() if key[0] == row.task and key[2] == row.budget and key[3] == row.signature
                 for r in recs]
    return [r for r in found if r["status"] == "ok"]


def _provenance(records: list[dict[str, Any]], row: Row, artifacts: Sequence[Path], site: Path) -> str:
    """The provenance cell of a row: a <details> listing where its numbers come from."""
    if not records:
        return ""

    def values(get: Any) -> str:
        return ", ".join(sorted({str(get(r)) for r in records if get(r) not in (None, "")})) or "unknown"

    facts = [("commit", values(lambda r: r["provenance"].get("commit"))),
             ("ddbench", values(lambda r: r["provenance"].get("ddbench"))),
             ("torch", values(lambda r: r["provenance"].get("torch"))),
             ("device", values(lambda r: r.get("device"))),
             ("distillation seeds", " ".join(map(str, row.seeds)) or "unknown"),
             ("evaluation seeds", values(lambda r: " ".join(map(str, r["config"].get("eval_seeds", []))))),
             ("recipe", values(lambda r: json.dumps(r.get("recipe", {}), sort_keys=True))),
             ("finished", values(lambda r: r.get("finished_at"))),
             ("config keys", ", ".join(r["key"] for r in records))]
    if row.deviations:
        facts.append(("departures from the official code", footnote(row.deviations)))
    links = []
    for r in records:
        name = f"{r['config']['task']}-{r['config']['distiller']}-{r['key']}.safetensors"  # as ddbench run --save-artifacts names it
        for path in (folder / name for folder in artifacts if (folder / name).is_file()):
            links.append(f'<a href="{escape(Path(os.path.relpath(path, site)).as_posix())}">{escape(path.name)}</a>')
    if links:
        facts.append(("artifacts", "<br>".join(links)))
    items = "".join(f"<dt>{escape(k)}</dt><dd>{v if k == 'artifacts' else escape(v)}</dd>" for k, v in facts)
    return f"<details><summary>{len(records)} cell{'s' if len(records) != 1 else ''}</summary><dl>{items}</dl></details>"


def task_boards(rows: Sequence[Row], records: Sequence[dict[str, Any]], lrs_weight: float = DD_RANKING_WEIGHT) -> dict[str, list[Board]]:
    """The boards of each task (a page each), by task."""
    out: dict[str, list[Board]] = {}
    for b in all_boards(rows, records, lrs_weight):
        out.setdefault(b.task, []).append(b)
    return out


def board_lines(boards: Sequence[Board]) -> list[tuple[str, Row]]:
    """Every line of a task's site table: the tiers of each of its boards, a reference row once."""
    lines, seen = [], set()
    for tier in (tier for b in boards for tier in b.tiers):
        for rank, row in tier.lines:
            if id(row) not in seen:
                seen.add(id(row))
                lines.append((rank, row))
    return lines


TEXT_COLUMNS = {"distiller", "protocol", "regime", "budget", "status", "provenance"}
"""The columns of a board's table that hold text (the others are numbers)."""


def _sort_key(key: Any) -> str:
    return "" if key is None else (f"{key:.10g}" if isinstance(key, float) else str(key))


def table_row(index: int, rank: str, r: Row, extras: list[str], headers: list[str], provenance: str) -> str:
    """A line of a task's table: the Markdown's texts, each cell with the value it sorts by."""
    shown = table_line(rank, r, extras)  # rank, label, mean ± std, nets, columns..., extras..., status
    texts = [shown[0], shown[1], r.protocol, r.regime, r.budget, *shown[2:], provenance]
    sort_keys = [rank if rank.isdigit() else "", r.label or r.distiller, r.protocol, r.regime, r.budget,
                 _number(r.mean), r.nets, *[_number(getattr(r, c.name)) for c in COLUMNS],
                 *[_number(r.extra.get(k, math.nan)) for k in extras], r.status, ""]
    cells = "".join(f'<td class="{"text" if h in TEXT_COLUMNS else "num"}" data-sort="{escape(_sort_key(key))}">'
                    f'{text if h == "provenance" else escape(text)}</td>' for h, text, key in zip(headers, texts, sort_keys))
    kind = "ref" if rank == "ref" else "failed" if not r.ok else "ranked"
    attrs = "".join(f' data-{k}="{escape(getattr(r, k) if k != "distiller" else r.distiller)}"' for k in FILTERS)
    return f'<tr class="{kind}" data-index="{index}"{attrs}>{cells}</tr>'


def plot_point(index: int, rank: str, r: Row) -> dict[str, Any]:
    """What the plot of ``site.js`` knows of a table line."""
    return {"index": index, "rank": rank, "label": r.label or r.distiller, "distiller": r.distiller, "protocol": r.protocol,
            "regime": r.regime, "budget": r.budget, "mean": _number(r.mean) if r.ok else None, "std": _number(r.std),
            "nets": r.nets, "stored_params": _number(r.stored_params), "ref": rank == "ref"}


def filters(lines: list[tuple[str, Row]]) -> str:
    """The selects that filter a task's table by :data:`FILTERS`."""
    out = []
    for key in FILTERS:
        options = sorted({getattr(r, key) for _, r in lines}, key=budget_key if key == "budget" else str)
        choices = "".join(f'<option value="{escape(o)}">{escape(o)}</option>' for o in options)
        out.append(f'<label>{key} <select data-filter="{key}"><option value="">all</option>{choices}</select></label>')
    return '<div class="filters">' + "".join(out) + '<span id="row-count" class="count"></span></div>'


def task_facts(boards: Sequence[Board], lines: list[tuple[str, Row]], analyses: bool) -> str:
    """The facts above a task's table: its cells, how it ranks, its references and regimes, how to read it."""
    recs = [r for b in boards for r in b.records]
    commits = sorted({str(r["provenance"].get("commit") or "unknown") for r in recs})
    protocols = sorted({record_protocol(r) for r in recs})
    references = sorted({r.label or r.distiller for rank, r in lines if rank == "ref"})
    facts = [f"{finished(recs)}; commit {', '.join(commits)}; protocols: {', '.join(protocols)}.",
             ranked_by(boards[0].metric, boards[0].better, "each protocol, budget and label regime") + " "
             + (" and ".join(f"<code>{escape(name)}</code>" for name in references) + " (rank ref): references, not ranked. "
                if references else "") + "Label regimes: "
             + "; ".join(f"<code>{g}</code>: {escape(REGIME_TEXT[g])}" for g in regimes_of([r for _, r in lines])) + ".",
             "Click a column header to sort; the plot shows the rows the filters keep, with each protocol's Pareto front "
             "(hover a point for its details). The Markdown boards: "
             + ", ".join(f"<code>{escape(b.name)}.md</code>" for b in boards) + "."]
    ranking = next((dd_ranking_fact(b) for b in boards if dd_ranking_fact(b)), "")
    if ranking:
        facts.append(_inline(ranking[2:]))
    if analyses:
        facts.append('Analyses of the distilled data: <a href="analyses.html">analyses.html</a>.')
    return '<ul class="facts">' + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"


def task_page(boards: Sequence[Board], records: list[dict[str, Any]], artifacts: Sequence[Path], site: Path, analyses: bool) -> str:
    """The page of one task (its ``boards``, one per protocol): facts, filters, the sortable table and the plot."""
    task, metric = boards[0].task, boards[0].metric
    lines = board_lines(boards)
    extras = board_columns([r for _, r in lines])
    by_row: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        if rec["config"]["task"] == task:
            by_row.setdefault(_signature(rec), []).append(rec)
    headers = ["rank", "distiller", "protocol", "regime", "budget", f"{metric} ± std", "nets",
               *[c.header.format(metric=metric) for c in COLUMNS], *extras, "status", "provenance"]
    head = "".join(f'<th class="{"text" if h in TEXT_COLUMNS else "num"}">{escape(h)}</th>' for h in headers)
    body = [table_row(i, rank, r, extras, headers, _provenance(_records_of(r, by_row), r, artifacts, site))
            for i, (rank, r) in enumerate(lines)]
    payload = {"metric": metric, "higher": boards[0].higher, "distillers": sorted({r.distiller for _, r in lines}),
               "rows": [plot_point(i, rank, r) for i, (rank, r) in enumerate(lines)]}
    json_text = json.dumps(payload, sort_keys=True).replace("</", "<\\/")
    sections = [
        ("back", '<p><a href="index.html">&larr; all tasks</a></p>'),
        ("title", f"<h1>ddbench leaderboard: {escape(task)}</h1>"),
        ("facts", task_facts(boards, lines, analyses)),
        ("filters", filters(lines)),
        ("plot", (f'<svg id="plot" class="plot" viewBox="0 0 760 420" width="760" height="420" role="img" '
                 f'aria-label="{escape(metric)} against stored parameters"></svg>\n<div id="legend" class="legend"></div>')),
        ("table", "\n".join([f'<div class="scroll"><table id="board" class="board"><thead><tr>{head}</tr></thead><tbody>',
                             *body, "</tbody></table></div>"])),
        ("data", f'<script type="application/json" id="board-data">{json_text}</script>'),
    ]
    return _page(f"ddbench: {task}", [html for _, html in sections])


def index_page(by_task: dict[str, list[Board]], records: list[dict[str, Any]], analyses: bool) -> str:
    """The index: a line per task with its budgets, protocols, regimes and row count."""
    items = []
    for task, boards in sorted(by_task.items()):
        task_rows = [r for b in boards for r in b.rows]
        budgets = sorted({r.budget for r in task_rows}, key=budget_key)
        cells = sum(1 for r in records if r["config"]["task"] == task and r["status"] != "skipped")
        items.append(f'<tr><td class="text"><a href="{escape(task)}.html">{escape(task)}</a></td>'
                     f'<td class="text">{escape(", ".join(budgets))}</td>'
                     f'<td class="text">{escape(", ".join(sorted({r.protocol for r in task_rows})))}</td>'
                     f'<td class="text">{escape(", ".join(regimes_of(task_rows)))}</td>'
                     f'<td class="num">{len(board_lines(boards))}</td><td class="num">{cells}</td></tr>')
    commits = sorted({str(r["provenance"].get("commit") or "unknown") for r in records})
    sections = [
        ("title", "<h1>ddbench leaderboards</h1>"),
        ("facts", (f'<ul class="facts"><li>{len(records)} stored cells from commit {escape(", ".join(commits))}; accuracy (or the '
                  "task's metric) per stored parameter, final-epoch test numbers, nothing selected on test.</li></ul>")),
        ("tasks", "\n".join([('<table class="board" id="tasks"><thead><tr><th class="text">task</th><th class="text">budgets</th>'
                             '<th class="text">protocols</th><th class="text">label regimes</th><th class="num">rows</th>'
                             '<th class="num">cells</th></tr></thead><tbody>'), *items, "</tbody></table>"])),
        ("analyses", '<p>Analyses of the distilled data: <a href="analyses.html">analyses.html</a>.</p>' if analyses else ""),
    ]
    return _page("ddbench leaderboards", [html for _, html in sections if html])


def _inline(text: str) -> str:
    """Markdown's inline code as HTML, the rest escaped."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))


def markdown_html(markdown: str) -> list[str]:
    """The HTML of the Markdown that :mod:`ddbench.analysis.pages` writes: headings, pipe tables,
    images, list items and paragraphs (nothing else occurs there)."""
    out: list[str] = []
    table: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            head, rest = table[0], [r for r in table[1:] if not set("".join(r)) <= set("-: ")]
            out.append('<table class="board"><thead><tr>' + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest) + "</tbody></table>")
            table = []
        image = re.fullmatch(r"!\[([^]]*)]\(([^)]*)\)", line)
        if image:
            out.append(f'<p><img src="analyses/{escape(image[2])}" alt="{escape(image[1])}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<p>&bull; {_inline(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    return out


def write_site(records: Sequence[dict[str, Any]], site: Path, analysis_pages: Sequence[Path] = (),
               artifacts: Sequence[Path] = (), lrs_weight: float = DD_RANKING_WEIGHT) -> list[Path]:
    """Write the site of ``records`` into ``site``: ``index.html``, ``<task>.html`` per task, the
    assets, and ``analyses.html`` from the analysis pages (``.md`` files that
    :func:`ddbench.analysis.pages.write_pages` wrote into ``site/analyses``, beside their PNGs).
    ``artifacts``: folders ``ddbench run --save-artifacts`` saved into (rows link to their files there);
    ``lrs_weight``: DD-Ranking's w (:func:`ddbench.results.board.dd_ranking`)."""
    site.mkdir(parents=True, exist_ok=True)
    records = list(records)
    rows = aggregate(records)
    pages = [p for p in analysis_pages if p.suffix == ".md"]
    written = []
    for name in ASSETS:
        target = site / name
        with resources.as_file(resources.files("ddbench.results").joinpath("site_assets").joinpath(name)) as source:
            shutil.copyfile(source, target)
        written.append(target)
    by_task = task_boards(rows, records, lrs_weight)
    index = site / "index.html"
    index.write_text(index_page(by_task, records, bool(pages)))
    written.append(index)
    for task, boards in sorted(by_task.items()):
        page = site / f"{task}.html"
        page.write_text(task_page(boards, records, artifacts, site, bool(pages)))
        written.append(page)
    if pages:
        body = ['<p><a href="index.html">&larr; all tasks</a></p>']
        for md in sorted(pages):
            body += markdown_html(md.read_text())
        analyses = site / "analyses.html"
        analyses.write_text(_page("ddbench: analyses of distilled data", body))
        written.append(analyses)
    return written
