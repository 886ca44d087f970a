"""The leaderboard site (``ddbench leaderboard --site DIR``): static HTML from the same records as the
Markdown boards, for any static host or the file system (no server, no network).

``index.html`` lists the tasks with their budgets, protocols and label regimes; ``<task>.html``
holds one table of every board of the task (both protocols, every budget tier and label regime),
with the ranks, numbers and reference rows of :func:`ddbench.results.leaderboard.tiers` (so the
site and the Markdown show the same numbers, formatted alike), a column of per-row provenance
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

from ddbench.results.records import footnote
from ddbench.results.leaderboard import (REGIME_TEXT, TEACHER_ROW, TRAINED, board_columns, boards, budget_key, direction, record_protocol,
                                         table_line, tiers)
from ddbench.results.records import COLUMNS, Row, aggregate, settings
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


def board_lines(task: str, rows: list[Row]) -> list[tuple[str, Row]]:
    """Every line of a task's site table: the tiers of each of its boards, a reference row once."""
    lines, seen = [], set()
    for task_, protocol in boards(rows):
        if task_ != task:
            continue
        board = [r for r in rows if r.task == task and r.protocol == protocol]
        declared = direction(board)
        for _, _, ranked in tiers(board, True if declared is None else declared):
            for rank, row in ranked:
                if id(row) not in seen:
                    seen.add(id(row))
                    lines.append((rank, row))
    return lines


def task_page(task: str, rows: list[Row], records: list[dict[str, Any]], artifacts: Sequence[Path], site: Path, analyses: bool) -> str:
    """The page of one task: facts, filters, the sortable table and the plot."""
    task_rows = [r for r in rows if r.task == task]
    lines = board_lines(task, rows)
    metric = next((r.metric for r in task_rows if r.metric), "metric")
    declared = direction(task_rows)
    extras = board_columns([r for _, r in lines])
    by_row: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        if rec["config"]["task"] == task:
            by_row.setdefault(_signature(rec), []).append(rec)
    recs = [r for r in records if r["config"]["task"] == task and r["status"] != "skipped"]
    finished = sorted(r["finished_at"] for r in recs)
    commits = sorted({str(r["provenance"].get("commit") or "unknown") for r in recs})
    protocols = sorted({record_protocol(r) for r in recs})
    headers = ["rank", "distiller", "protocol", "regime", "budget", f"{metric} ± std", "nets",
               *[c.header.format(metric=metric) for c in COLUMNS], *extras, "status", "provenance"]
    text_columns = {"distiller", "protocol", "regime", "budget", "status", "provenance"}
    head = "".join(f'<th class="{"text" if h in text_columns else "num"}">{escape(h)}</th>' for h in headers)
    body, data = [], []
    for index, (rank, r) in enumerate(lines):
        shown = table_line(rank, r, extras)  # rank, label, mean ± std, nets, columns..., extras..., status
        sort_keys = [rank if rank.isdigit() else "", r.label or r.distiller, r.protocol, r.regime, r.budget,
                     _number(r.mean), r.nets, *[_number(getattr(r, c.name)) for c in COLUMNS],
                     *[_number(r.extra.get(k, math.nan)) for k in extras], r.status, ""]
        texts = [shown[0], shown[1], r.protocol, r.regime, r.budget, *shown[2:]]
        prov = _provenance(_records_of(r, by_row), r, artifacts, site)
        cells = []
        for h, text, key in zip(headers, [*texts, ""], sort_keys):
            css = "text" if h in text_columns else "num"
            sort = "" if key is None else (f"{key:.10g}" if isinstance(key, float) else str(key))
            cells.append(f'<td class="{css}" data-sort="{escape(sort)}">{prov if h == "provenance" else escape(text)}</td>')
        kind = "ref" if rank == "ref" else "failed" if not r.ok else "ranked"
        attrs = "".join(f' data-{k}="{escape(getattr(r, k) if k != "distiller" else r.distiller)}"' for k in FILTERS)
        body.append(f'<tr class="{kind}" data-index="{index}"{attrs}>{"".join(cells)}</tr>')
        data.append({"index": index, "rank": rank, "label": r.label or r.distiller, "distiller": r.distiller, "protocol": r.protocol,
                     "regime": r.regime, "budget": r.budget, "mean": _number(r.mean) if r.ok else None, "std": _number(r.std),
                     "nets": r.nets, "stored_params": _number(r.stored_params), "ref": rank == "ref"})
    filters = []
    for key in FILTERS:
        options = sorted({getattr(r, key) for _, r in lines}, key=budget_key if key == "budget" else str)
        choices = "".join(f'<option value="{escape(o)}">{escape(o)}</option>' for o in options)
        filters.append(f'<label>{key} <select data-filter="{key}"><option value="">all</option>{choices}</select></label>')
    payload = {"metric": metric, "higher": True if declared is None else declared,
               "distillers": sorted({r.distiller for _, r in lines}), "rows": data}
    how = "higher" if declared in (True, None) else "lower"
    references = sorted({r.label or r.distiller for rank, r in lines if rank == "ref"})
    facts = [f"{len(recs)} cells finished {finished[0] if finished else '?'} to {finished[-1] if finished else '?'}; "
             f"commit {', '.join(commits)}; protocols: {', '.join(protocols)}.",
             f"Ranked by mean {metric} ({how} is better) within each protocol, budget and label regime; ± is the std over "
             "all evaluation nets of all distillation seeds. "
             + (" and ".join(f"<code>{escape(name)}</code>" for name in references) + " (rank ref): references, not ranked. "
                if references else "") + "Label regimes: "
             + "; ".join(f"<code>{g}</code>: {escape(REGIME_TEXT[g])}" for g in REGIME_TEXT if any(r.regime == g for _, r in lines)) + ".",
             "Click a column header to sort; the plot shows the rows the filters keep, with each protocol's Pareto front "
             "(hover a point for its details). The Markdown boards: "
             + ", ".join(f'<code>{escape(t if p == "native" else f"{t}-{p}")}.md</code>' for t, p in boards(task_rows)) + "."]
    if analyses:
        facts.append('Analyses of the distilled data: <a href="analyses.html">analyses.html</a>.')
    json_text = json.dumps(payload, sort_keys=True).replace("</", "<\\/")
    return _page(f"ddbench: {task}", [
        '<p><a href="index.html">&larr; all tasks</a></p>', f"<h1>ddbench leaderboard: {escape(task)}</h1>",
        '<ul class="facts">' + "".join(f"<li>{f}</li>" for f in facts) + "</ul>",
        '<div class="filters">' + "".join(filters) + '<span id="row-count" class="count"></span></div>',
        f'<svg id="plot" class="plot" viewBox="0 0 760 420" width="760" height="420" role="img" '
        f'aria-label="{escape(metric)} against stored parameters"></svg>', '<div id="legend" class="legend"></div>',
        f'<div class="scroll"><table id="board" class="board"><thead><tr>{head}</tr></thead><tbody>',
        *body, "</tbody></table></div>",
        f'<script type="application/json" id="board-data">{json_text}</script>'])


def index_page(rows: list[Row], records: list[dict[str, Any]], analyses: bool) -> str:
    """The index: a line per task with its budgets, protocols, regimes and row count."""
    items = []
    for task in sorted({r.task for r in rows}):
        task_rows = [r for r in rows if r.task == task]
        budgets = sorted({r.budget for r in task_rows}, key=budget_key)
        cells = sum(1 for r in records if r["config"]["task"] == task and r["status"] != "skipped")
        items.append(f'<tr><td class="text"><a href="{escape(task)}.html">{escape(task)}</a></td>'
                     f'<td class="text">{escape(", ".join(budgets))}</td>'
                     f'<td class="text">{escape(", ".join(sorted({r.protocol for r in task_rows})))}</td>'
                     f'<td class="text">{escape(", ".join(g for g in REGIME_TEXT if any(r.regime == g for r in task_rows)))}</td>'
                     f'<td class="num">{len(board_lines(task, rows))}</td><td class="num">{cells}</td></tr>')
    commits = sorted({str(r["provenance"].get("commit") or "unknown") for r in records})
    body = ["<h1>ddbench leaderboards</h1>",
            f'<ul class="facts"><li>{len(records)} stored cells from commit {escape(", ".join(commits))}; accuracy (or the task\'s '
            "metric) per stored parameter, final-epoch test numbers, nothing selected on test.</li></ul>",
            '<table class="board" id="tasks"><thead><tr><th class="text">task</th><th class="text">budgets</th>'
            '<th class="text">protocols</th><th class="text">label regimes</th><th class="num">rows</th><th class="num">cells</th>'
            "</tr></thead><tbody>", *items, "</tbody></table>"]
    if analyses:
        body.append('<p>Analyses of the distilled data: <a href="analyses.html">analyses.html</a>.</p>')
    return _page("ddbench leaderboards", body)


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
               artifacts: Sequence[Path] = ()) -> list[Path]:
    """Write the site of ``records`` into ``site``: ``index.html``, ``<task>.html`` per task, the
    assets, and ``analyses.html`` from the analysis pages (``.md`` files that
    :func:`ddbench.analysis.pages.write_pages` wrote into ``site/analyses``, beside their PNGs).
    ``artifacts``: folders ``ddbench run --save-artifacts`` saved into (rows link to their files there)."""
    site.mkdir(parents=True, exist_ok=True)
    records = list(records)
    rows = aggregate(records)
    pages = [p for p in analysis_pages if p.suffix == ".md"]
    written = []
    for name in ASSETS:
        target = site / name
        with resources.as_file(resources.files("ddbench.results").joinpath("site_assets", name)) as source:
            shutil.copyfile(source, target)
        written.append(target)
    index = site / "index.html"
    index.write_text(index_page(rows, records, bool(pages)))
    written.append(index)
    for task in sorted({r.task for r in rows}):
        page = site / f"{task}.html"
        page.write_text(task_page(task, rows, records, artifacts, site, bool(pages)))
        written.append(page)
    if pages:
        body = ['<p><a href="index.html">&larr; all tasks</a></p>']
        for md in sorted(pages):
            body += markdown_html(md.read_text())
        analyses = site / "analyses.html"
        analyses.write_text(_page("ddbench: analyses of distilled data", body))
        written.append(analyses)
    return written
