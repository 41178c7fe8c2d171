// pmatch review: keyboard shortcuts, zoom, and the widths the page computes (no inline scripts or styles: CSP).
(function () {
  "use strict";
  var answer = document.getElementById("answer");
  var undo = document.getElementById("undo");
  var zoom = document.getElementById("zoom");
  var busy = false;

  function submit(form, button) {
    if (busy || !form) return;
    busy = true;
    var note = answer && answer.querySelector("input.note");
    var carry = form.querySelector('input[name="note"]');
    if (note && carry && form !== answer) carry.value = note.value;  // a pick keeps the note typed
    document.querySelectorAll("button.v").forEach(function (b) { b.disabled = true; });
    if (button) {  // keep the verdict: disabled buttons are not submitted
      var h = document.createElement("input");
      h.type = "hidden"; h.name = button.name; h.value = button.value;
      form.appendChild(h);
    }
    form.submit();
  }
  document.querySelectorAll("button.v").forEach(function (b) {  // pick buttons sit outside their form (form=)
    b.addEventListener("click", function (e) { e.preventDefault(); submit(b.form, b.name ? b : null); });
  });

  function closeZoom() { if (zoom) { zoom.hidden = true; zoom.querySelector("img").removeAttribute("src"); } }
  document.querySelectorAll(".shot").forEach(function (s) {
    s.addEventListener("click", function () {
      zoom.querySelector("img").src = s.getAttribute("data-full");
      zoom.hidden = false;
    });
  });
  if (zoom) zoom.addEventListener("click", closeZoom);

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA");
    if (e.key === "Escape") { closeZoom(); if (typing) t.blur(); return; }
    if (typing) return;
    var pickForm = document.getElementById("pick");
    if (e.shiftKey && /^Digit[1-4]$/.test(e.code || "")) {  // Shift+1..4: that other candidate is the match
      var pb = document.querySelector('button.pick[data-key="' + e.code.slice(5) + '"]');
      if (pb && pickForm) { e.preventDefault(); submit(pickForm, pb); }
      return;
    }
    var k = e.key.toLowerCase();
    var map = {"m": "match", "1": "match", "n": "no_match", "2": "no_match", "u": "unsure", "3": "unsure", " ": "unsure"};
    if (map[k] && answer) {
      e.preventDefault();
      submit(answer, answer.querySelector('button[value="' + map[k] + '"]'));
    } else if (k === "x" && document.getElementById("none")) {  // none of these: the pair and the listed ones
      e.preventDefault();
      submit(document.getElementById("none"), null);
    } else if ((k === "z" || k === "backspace") && undo) {
      e.preventDefault();
      submit(undo, null);
    } else if (k === "s") {
      window.location.href = document.querySelector("a.nav").getAttribute("href");
    } else if (k === "enter" && !answer) {
      var back = document.querySelector(".back a");
      if (back) window.location.href = back.getAttribute("href");
    }
  });

  // every interval bar on the page (auto-accept precision; the certification sample's lower bound)
  document.querySelectorAll(".ci").forEach(function (ci) {
    var lo = parseFloat(ci.dataset.low), hi = parseFloat(ci.dataset.high), p = parseFloat(ci.dataset.point);
    var r = ci.querySelector(".ci-range");
    r.style.left = (100 * lo) + "%"; r.style.width = (100 * (hi - lo)) + "%";
    ci.querySelector(".ci-point").style.left = (100 * p) + "%";
  });
})();
