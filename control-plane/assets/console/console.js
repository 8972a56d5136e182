// sessiongate console: the little that is not htmx. Loaded from this
// origin only (the Content-Security-Policy allows no inline script).
"use strict";
(function () {
  // "Select all" and "Deselect all" for the mass actions.
  document.addEventListener("click", function (e) {
    var t = e.target.closest("[data-select]");
    if (!t) return;
    var on = t.getAttribute("data-select") === "all";
    document.querySelectorAll("input[name=names]").forEach(function (c) { c.checked = on; });
    updateSelected();
  });
  document.addEventListener("change", function (e) {
    if (e.target.matches("input[name=names]")) updateSelected();
  });
  function updateSelected() {
    var n = document.querySelectorAll("input[name=names]:checked").length;
    var out = document.getElementById("selected-count");
    if (out) out.textContent = n + " selected";
  }
  // "Expires in" counts down every second between the server's updates.
  function fmt(s) {
    if (s <= 0) return "now";
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + r + "s";
    return r + "s";
  }
  setInterval(function () {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      if (el.getAttribute("data-frozen") === "true") return;
      var s = parseInt(el.getAttribute("data-countdown"), 10);
      if (isNaN(s)) return;
      s = Math.max(0, s - 1);
      el.setAttribute("data-countdown", String(s));
      el.textContent = fmt(s);
    });
  }, 1000);
  // The add-session form shows the fields of the kind chosen.
  function kind() {
    var k = document.querySelector("input[name=kind]:checked");
    if (!k) return;
    document.querySelectorAll("[data-kind]").forEach(function (el) {
      el.hidden = el.getAttribute("data-kind") !== k.value;
    });
  }
  document.addEventListener("change", function (e) {
    if (e.target.matches("input[name=kind]")) kind();
  });
  document.addEventListener("DOMContentLoaded", function () { kind(); updateSelected(); });
})();
