// The coverage report's only script (inlined by html.py, allowed by the
// page's CSP hash): filters the missing-target tables. Everything else on
// the page works without it. It reads the DOM and toggles `hidden`; it never
// writes markup, so no cluster data is ever parsed as HTML here.
(function () {
  "use strict";
  var form = document.getElementById("filter");
  if (!form) return;
  var q = form.elements.namedItem("q");
  var stage = form.elements.namedItem("stage");
  var pool = form.elements.namedItem("pool");
  var replica = form.elements.namedItem("replica");  // only with several replicas
  var shown = document.getElementById("shown");
  // One entry per table (a Service's list comes in chunks of a few hundred
  // rows); its index of names and "lost at" flags is built on first use.
  var index = Array.prototype.map.call(document.querySelectorAll("table.missing"), function (t) {
    return { table: t, details: t.closest("details"), rows: null };
  });
  var generation = 0;
  var timer = 0;
  // Rows handled per task: at 100k nodes there are ~300k rows; slicing keeps
  // each task short, so typing never freezes the page, and a newer query
  // cancels an older one mid-way.
  var SLICE = 20000;

  function build(ix) {
    var head = ix.table.tHead.rows[0].cells;
    // The last column is the cause (html.py): searched with the name, not a stage.
    var stages = head.length - 1;
    ix.cols = [];
    for (var i = 1; i < stages; i++) {
      ix.cols.push({ kind: head[i].getAttribute("data-kind") || "",
                     pool: head[i].getAttribute("data-pool") || "",
                     replica: head[i].getAttribute("data-replica") || "" });
    }
    ix.rows = Array.prototype.slice.call(ix.table.tBodies[0].rows);
    ix.names = new Array(ix.rows.length);
    ix.lost = new Array(ix.rows.length);
    for (var r = 0; r < ix.rows.length; r++) {
      var cells = ix.rows[r].cells;
      var flags = "";
      ix.names[r] = (cells[0].textContent + " " + cells[stages].textContent).toLowerCase();
      for (var c = 1; c < stages; c++) flags += cells[c].textContent ? "1" : "0";
      ix.lost[r] = flags;
    }
    ix.visible = new Uint8Array(ix.rows.length).fill(1);
  }

  function filterTable(ix, needle, kind, want, copy) {
    var allowed = [];
    ix.cols.forEach(function (c, i) {
      if ((!kind || c.kind === kind) && (!want || c.pool === want) &&
          (!copy || c.replica === copy)) allowed.push(i);
    });
    var anyStage = !kind && !want && !copy;
    var match = new Uint8Array(ix.rows.length);
    var count = 0;
    for (var r = 0; r < ix.rows.length; r++) {
      var ok = !needle || ix.names[r].indexOf(needle) !== -1;
      if (ok && !anyStage) {
        ok = false;
        for (var k = 0; k < allowed.length; k++) {
          if (ix.lost[r].charCodeAt(allowed[k]) === 49) { ok = true; break; }
        }
      }
      if (ok) { match[r] = 1; count++; }
    }
    // A chunk with no match is hidden whole; its rows are left as they are
    // (and put right if it matches again): one toggle instead of hundreds.
    ix.table.parentNode.hidden = count === 0;
    if (count === 0) return 0;
    for (var i = 0; i < ix.rows.length; i++) {
      if (ix.visible[i] !== match[i]) { ix.visible[i] = match[i]; ix.rows[i].hidden = !match[i]; }
    }
    return count;
  }

  function apply() {
    var gen = ++generation;
    var needle = q.value.trim().toLowerCase();
    var kind = stage.value;
    var want = pool.value;
    var copy = replica ? replica.value : "";
    var filtered = needle !== "" || kind !== "" || want !== "" || copy !== "";
    var counts = new Map();
    var j = 0;
    form.setAttribute("data-busy", "");
    function step() {
      if (gen !== generation) return;
      var budget = SLICE;
      for (; j < index.length && budget > 0; j++) {
        var ix = index[j];
        if (!ix.rows) { build(ix); budget -= ix.rows.length; }
        var count = filterTable(ix, needle, kind, want, copy);
        budget -= ix.rows.length;
        var c = counts.get(ix.details) || { shown: 0, total: 0 };
        c.shown += count;
        c.total += ix.rows.length;
        counts.set(ix.details, c);
      }
      if (j < index.length) { setTimeout(step, 0); return; }
      var sum = 0, all = 0;
      counts.forEach(function (c, details) {
        sum += c.shown;
        all += c.total;
        details.querySelector(".count").textContent =
          filtered ? c.shown + " of " + c.total + " shown" : c.total + " missing";
        details.hidden = filtered && c.shown === 0;
        if (needle && c.shown > 0) details.open = true;
      });
      shown.textContent = filtered ? "showing " + sum + " of " + all + " missing targets"
                                   : "all " + all + " missing targets shown";
      form.removeAttribute("data-busy");
    }
    step();
  }

  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
  stage.addEventListener("change", apply);
  pool.addEventListener("change", apply);
  if (replica) replica.addEventListener("change", apply);
  form.addEventListener("submit", function (e) { e.preventDefault(); apply(); });
  // Print everything that is filtered in, closed sections included.
  window.addEventListener("beforeprint", function () {
    Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
  });
  // Build the index while the page is idle, so that the first keystroke
  // only scans (at 100k nodes reading ~1M cells takes a couple of seconds).
  var idle = window.requestIdleCallback || function (f) { return setTimeout(f, 50); };
  var next = 0;
  idle(function prebuild(deadline) {
    var budget = SLICE;
    while (next < index.length && budget > 0) {
      if (deadline && deadline.timeRemaining && deadline.timeRemaining() < 2) break;
      if (!index[next].rows) { build(index[next]); budget -= index[next].rows.length; }
      next++;
    }
    if (next < index.length) idle(prebuild);
  });
  var note = document.getElementById("nojs");
  if (note) note.hidden = true;
  form.hidden = false;
})();
