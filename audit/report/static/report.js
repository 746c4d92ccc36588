// diffaudit report: sortable tables and the gallery lightbox. No network, no dependencies.
(function () {
  "use strict";

  // -- sortable tables ------------------------------------------------------------------------
  // <th data-better="lower|higher|text" data-type="num|text">: the first click sorts in the
  // column's better direction, the next click reverses it. Cells give their sort key in
  // data-sort (empty = missing: always last). Rows keep their original order among ties.
  function cellKey(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ""; }
    var key = cell.getAttribute("data-sort");
    return key === null ? cell.textContent.trim() : key;
  }

  function sortBy(th) {
    var table = th.closest("table");
    var headers = Array.prototype.slice.call(th.parentNode.children);
    var index = headers.indexOf(th);
    var better = th.getAttribute("data-better") || "text";
    var numeric = th.getAttribute("data-type") === "num";
    var first = better === "higher" ? "descending" : "ascending";
    var direction = th.getAttribute("aria-sort") === first
      ? (first === "ascending" ? "descending" : "ascending") : first;
    var sign = direction === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) {
      if (!row.hasAttribute("data-order")) { row.setAttribute("data-order", String(i)); }
    });
    rows.sort(function (a, b) {
      var x = cellKey(a, index), y = cellKey(b, index);
      var order = Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
      if (x === "" || y === "") {
        return (x === "") - (y === "") || order;
      }
      var c;
      if (numeric) {
        c = Number(x) - Number(y);
        if (isNaN(c)) { c = 0; }
      } else {
        c = x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
      }
      return sign * c || order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (h) { if (h !== th) { h.removeAttribute("aria-sort"); } });
    th.setAttribute("aria-sort", direction);
    var rank = 1;
    rows.forEach(function (row) {
      var cell = row.querySelector("td.rank");
      if (cell) { cell.textContent = cellKey(row, index) === "" ? "" : String(rank++); }
    });
  }

  document.querySelectorAll("table.sortable th[data-better]").forEach(function (th) {
    th.tabIndex = 0;
    th.title = th.getAttribute("data-better") === "text" ? "sort"
      : "sort, " + th.getAttribute("data-better") + " is better first; click again to reverse";
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(th); }
    });
  });

  // -- same-seed gallery: filter rows by predicted class ----------------------------------------
  // <select id="class-filter" data-target="TABLE">: keeps the rows holding an image whose
  // data-class is the chosen one, dims that row's other images; "" shows everything.
  var filter = document.getElementById("class-filter");
  if (filter) {
    filter.addEventListener("change", function () {
      var wanted = filter.value;
      var table = document.getElementById(filter.getAttribute("data-target"));
      var shown = 0;
      Array.prototype.slice.call(table.tBodies[0].rows).forEach(function (row) {
        var figures = Array.prototype.slice.call(row.querySelectorAll("figure[data-class]"));
        var hit = false;
        figures.forEach(function (f) {
          var match = wanted === "" || f.getAttribute("data-class") === wanted;
          f.classList.toggle("dim", !match);
          hit = hit || match;
        });
        row.classList.toggle("filtered", !hit);
        if (hit) { shown++; }
      });
      var count = document.getElementById("filter-count");
      if (count) { count.textContent = wanted === "" ? "" : shown + " seeds shown"; }
    });
  }

  // -- gallery lightbox -----------------------------------------------------------------------
  var dialog = document.getElementById("lightbox");
  if (!dialog) { return; }
  var big = null;  // created on first use, so the page holds no image without a source
  var info = dialog.querySelector(".detail");
  var thumbs = Array.prototype.slice.call(document.querySelectorAll(".gallery a.thumb"));
  var current = -1;

  function show(i) {
    if (i < 0 || i >= thumbs.length) { return; }
    current = i;
    var link = thumbs[i];
    var small = link.querySelector("img");
    if (!big) {
      big = document.createElement("img");
      dialog.querySelector(".big").insertBefore(big, info);
    }
    big.onerror = function () {
      big.onerror = null;
      big.src = small.src;
      var note = document.createElement("p");
      note.className = "note";
      note.textContent = "The original image is not next to this report; showing the thumbnail.";
      info.appendChild(note);
    };
    big.src = link.getAttribute("href");
    big.alt = small.alt;
    info.textContent = "";
    var source = link.parentNode.querySelector(".detail");
    if (source) {
      Array.prototype.slice.call(source.childNodes).forEach(function (node) {
        info.appendChild(node.cloneNode(true));
      });
    }
    if (!dialog.open) { dialog.showModal(); }
  }

  thumbs.forEach(function (link, i) {
    link.addEventListener("click", function (event) { event.preventDefault(); show(i); });
  });
  dialog.addEventListener("click", function (event) {
    if (event.target === dialog || event.target.classList.contains("close")) { dialog.close(); }
  });
  dialog.addEventListener("keydown", function (event) {
    if (event.key === "ArrowRight") { show(current + 1); }
    if (event.key === "ArrowLeft") { show(current - 1); }
  });
})();
