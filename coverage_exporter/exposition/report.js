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
  var shown = document.getElementById("shown");
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.missing"));
  var index = null;
  var generation = 0;
  var timer = 0;
  // Rows handled per task: at 100k nodes a table has ~100k rows; slicing the
  // work keeps each task short, so typing never freezes the page, and a newer
  // query cancels an older one mid-way.
  var SLICE = 40000;

  // Built once, on first use: names and "lost at" flags of every row, so a
  // keystroke scans arrays and touches only the rows whose state changes.
  function build() {
    return tables.map(function (table) {
      var head = table.tHead.rows[0].cells;
      var cols = [];
      for (var i = 1; i < head.length; i++) {
        cols.push({ kind: head[i].getAttribute("data-kind") || "",
                    pool: head[i].getAttribute("data-pool") || "" });
      }
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      var names = new Array(rows.length);
      var lost = new Array(rows.length);
      for (var r = 0; r < rows.length; r++) {
        var cells = rows[r].cells;
        var flags = "";
        names[r] = cells[0].textContent.toLowerCase();
        for (var c = 1; c < cells.length; c++) flags += cells[c].firstChild ? "1" : "0";
        lost[r] = flags;
      }
      var details = table.closest("details");
      return { details: details, count: details.querySelector(".count"), rows: rows,
               names: names, lost: lost, cols: cols, visible: new Uint8Array(rows.length).fill(1) };
    });
  }

  function apply() {
    if (!index) index = build();
    var gen = ++generation;
    var needle = q.value.trim().toLowerCase();
    var kind = stage.value;
    var want = pool.value;
    var filtered = needle !== "" || kind !== "" || want !== "";
    var jobs = index.map(function (ix) {
      var allowed = [];
      ix.cols.forEach(function (c, i) {
        if ((!kind || c.kind === kind) && (!want || c.pool === want)) allowed.push(i);
      });
      return { ix: ix, allowed: allowed, anyStage: !kind && !want, r: 0, count: 0 };
    });
    var j = 0;
    form.setAttribute("data-busy", "");
    function step() {
      if (gen !== generation) return;
      var budget = SLICE;
      while (j < jobs.length && budget > 0) {
        var job = jobs[j];
        var ix = job.ix;
        var end = Math.min(ix.rows.length, job.r + budget);
        for (var r = job.r; r < end; r++) {
          var ok = !needle || ix.names[r].indexOf(needle) !== -1;
          if (ok && !job.anyStage) {
            ok = false;
            for (var k = 0; k < job.allowed.length; k++) {
              if (ix.lost[r].charCodeAt(job.allowed[k]) === 49) { ok = true; break; }
            }
          }
          if (ok) job.count++;
          var v = ok ? 1 : 0;
          if (ix.visible[r] !== v) { ix.visible[r] = v; ix.rows[r].hidden = !ok; }
        }
        budget -= end - job.r;
        job.r = end;
        if (end === ix.rows.length) {
          var total = ix.rows.length;
          ix.count.textContent = filtered ? job.count + " of " + total + " shown" : total + " missing";
          ix.details.hidden = filtered && job.count === 0;
          // A search for a few names should show them without another click.
          if (needle && job.count > 0 && job.count <= 2000) ix.details.open = true;
          j++;
        }
      }
      if (j < jobs.length) { setTimeout(step, 0); return; }
      var sum = 0, all = 0;
      jobs.forEach(function (job) { sum += job.count; all += job.ix.rows.length; });
      shown.textContent = filtered ? "showing " + sum + " of " + all + " missing targets"
                                   : "all " + all + " missing targets shown";
      form.removeAttribute("data-busy");
    }
    step();
  }

  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
  stage.addEventListener("change", apply);
  pool.addEventListener("change", apply);
  form.addEventListener("submit", function (e) { e.preventDefault(); apply(); });
  // Print everything that is filtered in, closed sections included.
  window.addEventListener("beforeprint", function () {
    Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
  });
  var note = document.getElementById("nojs");
  if (note) note.hidden = true;
  form.hidden = false;
})();
