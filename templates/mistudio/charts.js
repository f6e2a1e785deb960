/* miStudio's charts: small hand-written SVG line charts and histograms, no library. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PAD = { left: 48, right: 10, top: 10, bottom: 24 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1e4 || a < 1e-2) return v.toExponential(1);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(3);
  }

  function frame(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var box = svg.getBoundingClientRect();
    var w = Math.max(box.width, 200), h = Math.max(box.height, 120);
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    return { w: w, h: h, x0: PAD.left, x1: w - PAD.right, y0: h - PAD.bottom, y1: PAD.top };
  }

  function axes(svg, f, xmin, xmax, ymin, ymax, xlabel) {
    for (var i = 0; i <= 4; i++) {
      var y = f.y0 + (f.y1 - f.y0) * i / 4;
      el("line", { x1: f.x0, x2: f.x1, y1: y, y2: y, "class": "grid" }, svg);
      el("text", { x: f.x0 - 4, y: y + 3, "text-anchor": "end" }, svg).textContent = fmt(ymin + (ymax - ymin) * i / 4);
    }
    el("line", { x1: f.x0, x2: f.x1, y1: f.y0, y2: f.y0, "class": "axis" }, svg);
    el("line", { x1: f.x0, x2: f.x0, y1: f.y0, y2: f.y1, "class": "axis" }, svg);
    el("text", { x: f.x0, y: f.h - 6, "text-anchor": "start" }, svg).textContent = fmt(xmin);
    el("text", { x: f.x1, y: f.h - 6, "text-anchor": "end" }, svg).textContent = fmt(xmax);
    if (xlabel) el("text", { x: (f.x0 + f.x1) / 2, y: f.h - 6, "text-anchor": "middle" }, svg).textContent = xlabel;
  }

  function range(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    if (!isFinite(lo)) return [0, 1];
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    return [lo, hi];
  }

  /* xs, ys: numbers; draws one polyline. Returns the number of points drawn. */
  function lineChart(svg, xs, ys, opts) {
    opts = opts || {};
    var f = frame(svg);
    var points = [];
    for (var i = 0; i < xs.length; i++) if (isFinite(ys[i]) && isFinite(xs[i])) points.push([xs[i], ys[i]]);
    if (!points.length) {
      el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle" }, svg).textContent = opts.empty || "no data yet";
      return 0;
    }
    var xr = range(points.map(function (p) { return p[0]; }));
    var yr = range(points.map(function (p) { return p[1]; }));
    if (opts.yMin !== undefined) yr[0] = Math.min(yr[0], opts.yMin);
    axes(svg, f, xr[0], xr[1], yr[0], yr[1], opts.xlabel);
    var d = points.map(function (p, j) {
      var x = f.x0 + (f.x1 - f.x0) * (p[0] - xr[0]) / (xr[1] - xr[0]);
      var y = f.y0 + (f.y1 - f.y0) * (p[1] - yr[0]) / (yr[1] - yr[0]);
      return (j ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
    }).join("");
    el("path", { d: d, "class": "series", "data-points": points.length }, svg);
    return points.length;
  }

  /* edges: n+1 bin edges, counts: n counts. Returns the number of bars drawn. */
  function histogram(svg, edges, counts, opts) {
    opts = opts || {};
    var f = frame(svg);
    var total = counts.reduce(function (a, b) { return a + b; }, 0);
    if (!counts.length || !total) {
      el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle" }, svg).textContent = opts.empty || "no data";
      return 0;
    }
    var ymax = Math.max.apply(null, counts);
    var xmin = edges[0], xmax = edges[edges.length - 1];
    axes(svg, f, xmin, xmax, 0, ymax, opts.xlabel);
    var bars = 0;
    counts.forEach(function (c, i) {
      if (!c) return;
      var xa = f.x0 + (f.x1 - f.x0) * (edges[i] - xmin) / (xmax - xmin);
      var xb = f.x0 + (f.x1 - f.x0) * (edges[i + 1] - xmin) / (xmax - xmin);
      var y = f.y0 + (f.y1 - f.y0) * c / ymax;
      var bar = el("rect", { x: xa + 0.5, y: y, width: Math.max(1, xb - xa - 1), height: f.y0 - y, "class": "bin" }, svg);
      el("title", {}, bar).textContent = fmt(edges[i]) + " to " + fmt(edges[i + 1]) + ": " + c;
      bars++;
    });
    return bars;
  }

  /* points: [{x, y, group, label, href}]; one dot per point, one colour per group (a sweep's
     site), a link to each point's page. Returns the number of dots drawn. */
  function scatter(svg, points, opts) {
    opts = opts || {};
    var f = frame(svg);
    var shown = points.filter(function (p) { return isFinite(p.x) && isFinite(p.y) && p.x !== null && p.y !== null; });
    if (!shown.length) {
      el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle" }, svg).textContent = opts.empty || "no data yet";
      return 0;
    }
    var xr = range(shown.map(function (p) { return p.x; }));
    var yr = range(shown.map(function (p) { return p.y; }));
    axes(svg, f, xr[0], xr[1], yr[0], yr[1], opts.xlabel);
    var groups = [];
    shown.forEach(function (p) {
      if (groups.indexOf(p.group) < 0) groups.push(p.group);
      var x = f.x0 + (f.x1 - f.x0) * (p.x - xr[0]) / (xr[1] - xr[0]);
      var y = f.y0 + (f.y1 - f.y0) * (p.y - yr[0]) / (yr[1] - yr[0]);
      var parent = p.href ? el("a", { href: p.href }, svg) : svg;
      var dot = el("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 4, "class": "dot group-" + (groups.indexOf(p.group) % 6) }, parent);
      el("title", {}, dot).textContent = (p.label || "") + ": L0 " + fmt(p.x) + ", " + fmt(p.y);
    });
    return shown.length;
  }

  window.miCharts = { lineChart: lineChart, histogram: histogram, scatter: scatter, fmt: fmt };

  // Bars carry their share as data-share (a percentage): the Content-Security-Policy refuses style
  // attributes in the markup, not styles set from a script.
  document.querySelectorAll(".bar > span[data-share]").forEach(function (node) {
    node.style.width = node.getAttribute("data-share") + "%";
  });
})();
