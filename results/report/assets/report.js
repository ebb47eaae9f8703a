/* adbench report: charts, sortable tables, provenance panel, filters. Plain script (pages are
   opened from disk: no modules, no fetch; every datum is inline JSON). */
(function () {
  "use strict";

  function drawCharts() {
    document.querySelectorAll("script.chart-spec").forEach(function (node) {
      var target = document.getElementById(node.getAttribute("data-for"));
      if (!target || typeof Plotly === "undefined") { return; }
      var spec = JSON.parse(node.textContent);
      Plotly.newPlot(target, spec.data, spec.layout, {displaylogo: false, responsive: true,
        modeBarButtonsToRemove: ["sendDataToCloud"], toImageButtonOptions: {format: "svg"}});
    });
  }

  function cellKey(row, col) {
    var cell = row.children[col];
    if (!cell) { return null; }
    var raw = cell.getAttribute("data-value");
    return raw === null ? cell.textContent.trim() : raw;
  }

  function sortTable(button) {
    var th = button.closest("th");
    var table = button.closest("table");
    var col = parseInt(button.getAttribute("data-col"), 10);
    var numeric = button.getAttribute("data-kind") === "num";
    var current = th.getAttribute("aria-sort");
    var descending = current ? current === "ascending" : numeric;
    table.querySelectorAll("thead th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var ka = cellKey(a, col), kb = cellKey(b, col);
      var ea = ka === null || ka === "", eb = kb === null || kb === "";
      if (ea || eb) { return ea === eb ? 0 : (ea ? 1 : -1); }  /* empty cells last, either way */
      var cmp = numeric ? parseFloat(ka) - parseFloat(kb) : ka.localeCompare(kb);
      return descending ? -cmp : cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  var provenance = {};
  function loadProvenance() {
    document.querySelectorAll("script.provenance-data").forEach(function (node) {
      var entries = JSON.parse(node.textContent);
      Object.keys(entries).forEach(function (k) { provenance[k] = entries[k]; });
    });
  }

  function showProvenance(cell) {
    var entry = provenance[cell.getAttribute("data-prov")];
    var panel = document.getElementById("provenance");
    if (!entry || !panel) { return; }
    document.querySelectorAll("td.selected").forEach(function (c) { c.classList.remove("selected"); });
    cell.classList.add("selected");
    var list = panel.querySelector(".provenance-body");
    list.textContent = "";
    Object.keys(entry).forEach(function (label) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = label;
      var value = entry[label];
      dd.textContent = Array.isArray(value) ? value.join("\n") : String(value);
      if (Array.isArray(value)) { dd.style.whiteSpace = "pre-line"; }
      list.appendChild(dt); list.appendChild(dd);
    });
    panel.hidden = false;
  }

  function filterRows(input) {
    var needle = input.value.trim().toLowerCase();
    var scope = document.getElementById(input.getAttribute("data-target"));
    scope.querySelectorAll("tbody tr").forEach(function (row) {
      var head = row.querySelector("th");
      var text = (head ? head.textContent : row.textContent).toLowerCase();
      row.hidden = needle !== "" && text.indexOf(needle) < 0;
    });
  }

  function showOne(select) {
    var scope = document.getElementById(select.getAttribute("data-target"));
    scope.querySelectorAll(":scope > .one-of").forEach(function (section) {
      section.hidden = section.id !== select.value;
    });
  }

  function toggleColumn(box) {
    document.querySelectorAll("table." + box.getAttribute("data-table-group") + " ." + box.getAttribute("data-toggle-col"))
      .forEach(function (cell) { cell.classList.toggle("hidden", !box.checked); });
  }

  function init() {
    loadProvenance();
    document.querySelectorAll("[data-initially-hidden]").forEach(function (s) { s.hidden = true; });
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button.sort");
      if (button) { sortTable(button); return; }
      if (event.target.closest(".provenance-close")) { document.getElementById("provenance").hidden = true; return; }
      var cell = event.target.closest("td[data-prov]");
      if (cell) { showProvenance(cell); }
    });
    document.addEventListener("focusin", function (event) {
      var cell = event.target.closest && event.target.closest("td[data-prov]");
      if (cell) { showProvenance(cell); }
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { var p = document.getElementById("provenance"); if (p) { p.hidden = true; } }
    });
    document.querySelectorAll("input.row-filter").forEach(function (input) {
      input.addEventListener("input", function () { filterRows(input); });
    });
    document.querySelectorAll("select.show-one").forEach(function (select) {
      select.addEventListener("change", function () { showOne(select); });
    });
    document.querySelectorAll("input[data-toggle-col]").forEach(function (box) {
      box.addEventListener("change", function () { toggleColumn(box); });
    });
    drawCharts();
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
