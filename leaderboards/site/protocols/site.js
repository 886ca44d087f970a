/* ddbench leaderboard site: sorting and filtering the board table, and the plot of the metric
   against stored parameters (log x) with the Pareto front. No dependencies; works from file://.
   The page embeds its rows as JSON (<script id="board-data">); each table row names its entry. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                 "#393b79", "#637939", "#843c39", "#7b4173"];

  function number(text) {
    if (text === undefined || text === null || text === "") return null;
    var x = Number(text);
    return isFinite(x) ? x : null;
  }

  /* Sorting: a click on a header sorts by that column, a second click reverses; blanks go last. */
  function sortable(table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      th.addEventListener("click", function () {
        var ascending = !th.classList.contains("sorted-asc");
        Array.prototype.forEach.call(headers, function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
          var nx = number(x), ny = number(y);
          if (x === "" || y === "") return (x === "") - (y === "");
          var order = nx !== null && ny !== null ? nx - ny : x.localeCompare(y);
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }

  /* Filtering: every <select data-filter="key"> keeps the rows whose data-key equals its value. */
  function filterable(table, selects, onChange) {
    function apply() {
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var keep = selects.every(function (s) { return !s.value || row.getAttribute("data-" + s.getAttribute("data-filter")) === s.value; });
        row.hidden = !keep;
        shown += keep;
      });
      var count = document.getElementById("row-count");
      if (count) count.textContent = shown + " of " + table.tBodies[0].rows.length + " rows shown";
      onChange();
    }
    selects.forEach(function (s) { s.addEventListener("change", apply); });
    apply();
  }

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  /* The points not dominated by one with fewer (or equal) stored params and a better metric. */
  function pareto(points, higher) {
    var sorted = points.slice().sort(function (a, b) { return a.x - b.x || (higher ? b.y - a.y : a.y - b.y); });
    var front = [], best = higher ? -Infinity : Infinity;
    sorted.forEach(function (p) {
      if (higher ? p.y > best : p.y < best) { front.push(p); best = p.y; }
    });
    return front;
  }

  function plot(svg, data, visible) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 760, H = 420, left = 60, right = 20, top = 16, bottom = 44;
    var points = data.rows.filter(function (r) { return visible[r.index] && r.mean !== null && r.stored_params > 0; }).map(function (r) {
      return { x: r.stored_params, y: r.mean, row: r };
    });
    if (!points.length) {
      legend(document.getElementById("legend"), data, [], {});
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg).textContent = "no rows with a result shown";
      return;
    }
    var lx = points.map(function (p) { return Math.log10(p.x); }), ys = points.map(function (p) { return p.y; });
    var x0 = Math.floor(Math.min.apply(null, lx)), x1 = Math.ceil(Math.max.apply(null, lx));
    if (x1 === x0) x1 = x0 + 1;
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys), pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 1;
    y0 -= pad; y1 += pad;
    function X(v) { return left + (Math.log10(v) - x0) / (x1 - x0) * (W - left - right); }
    function Y(v) { return top + (y1 - v) / (y1 - y0) * (H - top - bottom); }
    for (var e = x0; e <= x1; e++) {
      el("line", { "class": "grid", x1: X(Math.pow(10, e)), x2: X(Math.pow(10, e)), y1: top, y2: H - bottom }, svg);
      el("text", { x: X(Math.pow(10, e)), y: H - bottom + 16, "text-anchor": "middle" }, svg).textContent = "1e" + e;
    }
    var step = niceStep((y1 - y0) / 5);
    for (var v = Math.ceil(y0 / step) * step; v <= y1; v += step) {
      el("line", { "class": "grid", x1: left, x2: W - right, y1: Y(v), y2: Y(v) }, svg);
      el("text", { x: left - 6, y: Y(v) + 4, "text-anchor": "end" }, svg).textContent = String(Number(v.toPrecision(6)));
    }
    el("line", { "class": "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }, svg);
    el("line", { "class": "axis", x1: left, x2: left, y1: top, y2: H - bottom }, svg);
    el("text", { x: (left + W - right) / 2, y: H - 8, "text-anchor": "middle" }, svg).textContent = "stored parameters (log scale)";
    el("text", { x: 14, y: (top + H - bottom) / 2, "text-anchor": "middle", transform: "rotate(-90 14 " + (top + H - bottom) / 2 + ")" }, svg)
      .textContent = "test " + data.metric;
    var protocols = {};
    points.forEach(function (p) { if (!p.row.ref && p.row.rank !== "—") (protocols[p.row.protocol] = protocols[p.row.protocol] || []).push(p); });
    Object.keys(protocols).sort().forEach(function (protocol) {
      var front = pareto(protocols[protocol], data.higher), d = "";
      front.forEach(function (p, k) {
        d += (k ? "H" + X(p.x) + "V" : "M" + X(p.x) + ",") + Y(p.y);
      });
      if (front.length) el("path", { "class": "front", d: d, "data-protocol": protocol }, svg).appendChild(title("Pareto front (" + protocol + ")"));
    });
    var colours = {};
    data.distillers.forEach(function (name, k) { colours[name] = PALETTE[k % PALETTE.length]; });
    points.forEach(function (p) {
      var r = p.row;
      var dot = el("circle", { "class": "point" + (r.ref ? " ref" : ""), cx: X(p.x), cy: Y(p.y), r: r.ref ? 6 : 5,
                               fill: colours[r.distiller] || "#444", "data-index": r.index }, svg);
      dot.appendChild(title(r.label + "\n" + r.protocol + " protocol, " + r.budget + ", " + r.regime + " labels\n" + data.metric + " " +
        r.mean.toFixed(2) + (r.std !== null ? " ± " + r.std.toFixed(2) : "") + " (" + r.nets + " nets)\n" +
        Math.round(r.stored_params).toLocaleString("en") + " stored params" + (r.rank === "ref" ? " (reference)" : ", rank " + r.rank)));
    });
    legend(document.getElementById("legend"), data, points, colours);
  }

  /* A step of 1, 2 or 5 times a power of ten, near ``rough``. */
  function niceStep(rough) {
    var power = Math.pow(10, Math.floor(Math.log10(rough))), scaled = rough / power;
    return power * (scaled < 1.5 ? 1 : scaled < 3.5 ? 2 : scaled < 7.5 ? 5 : 10);
  }

  function legend(box, data, points, colours) {
    if (!box) return;
    box.textContent = "";
    var names = data.distillers.filter(function (name) { return points.some(function (p) { return p.row.distiller === name; }); });
    names.forEach(function (name) {
      var item = document.createElement("span"), swatch = document.createElement("i");
      swatch.style.background = colours[name];
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      box.appendChild(item);
    });
    var note = document.createElement("span");
    note.textContent = "black outline: a reference row; red steps: the Pareto front of each protocol";
    box.appendChild(note);
  }

  function title(text) {
    var t = document.createElementNS(SVG, "title");
    t.textContent = text;
    return t;
  }

  function main() {
    var source = document.getElementById("board-data"), table = document.getElementById("board");
    if (!source || !table) return;
    var data = JSON.parse(source.textContent), svg = document.getElementById("plot");
    var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
    sortable(table);
    filterable(table, selects, function () {
      var visible = {};
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) { visible[row.getAttribute("data-index")] = !row.hidden; });
      if (svg) plot(svg, data, visible);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main); else main();
})();
