// Only what htmx cannot do under the strict CSP. htmx polls (hx-trigger="every Ns", N from the server, which answers
// 204 for an unchanged region and 286 when nothing can change); this pauses polls while Live is off or the tab is
// hidden, says how current the page is, highlights changed data-live-state, keeps <details id> open and the row
// selection counted across swaps, confirms in the page's <dialog>, and applies filter menus on change. Live's
// settings are cookies the server reads.
(function () {
  "use strict";
  var states = {}, openDetails = [], failed = false, updated = "";

  function all(selector) {
    return Array.prototype.slice.call(document.querySelectorAll(selector));
  }

  function isLive() {
    var toggle = document.querySelector("[data-live-toggle]");
    return !toggle || toggle.checked;
  }

  function remember(name, value) {
    document.cookie = "batchboard_live_" + name + "=" + value + "; path=/; max-age=31536000; SameSite=Lax";
  }

  function refreshNow() {
    all("[data-live-poll]").forEach(function (region) { htmx.trigger(region, "live-refresh"); });
  }

  function showState() {
    var regions = all("[data-live-poll]"), retry = regions.length && regions[0].getAttribute("data-live-retry");
    var state = !isLive() || document.hidden ? "paused" : !regions.length ? "stopped" : failed || retry ? "failing" : "live";
    var text = !isLive() ? "Paused" : document.hidden ? "Paused while hidden"
      : !regions.length ? "Up to date: nothing here can change"
      : failed ? "Cannot reach batchboard: retrying"
      : retry ? "API unavailable: retrying every " + retry + " s"
      : updated ? "Updated " + updated : "Watching for changes";
    all("[data-live-status]").forEach(function (element) {
      element.textContent = text;
      element.setAttribute("data-state", state);
    });
  }

  function noteStates(highlight) {
    all("[data-live-key]").forEach(function (element) {
      var key = element.getAttribute("data-live-key"), state = element.getAttribute("data-live-state");
      if (highlight && key in states && states[key] !== state) {
        element.classList.add("live-changed");
        window.setTimeout(function () { element.classList.remove("live-changed"); }, 2500);
      }
      states[key] = state;
    });
  }

  function syncSelection() {
    var boxes = all("input[data-select]");
    var count = boxes.filter(function (box) { return box.checked; }).length;
    all("input[data-select-all]").forEach(function (box) {
      box.checked = count > 0 && count === boxes.length;
      box.indeterminate = count > 0 && count < boxes.length;
    });
    all("[data-selection-count]").forEach(function (element) { element.textContent = String(count); });
    all("[data-selection-count-text]").forEach(function (element) { element.hidden = !count; });
    var chosen = boxes.filter(function (box) { return box.checked; }).map(function (box) {
      return box.getAttribute("data-select-label") || box.value;
    });
    all("[data-selection-button]").forEach(function (button) {
      button.disabled = !count;
      var title = button.getAttribute(count === 1 ? "data-confirm-one" : "data-confirm-many");
      button.setAttribute("data-confirm-title", title.replace("{n}", String(count)));
      button.setAttribute("data-confirm-detail", chosen.join(" · "));
      button.setAttribute("data-confirm-yes", count === 1 ? "Cancel 1 batch" : "Cancel " + count + " batches");
    });
  }

  function setUp() {
    all("[data-js-only]").forEach(function (element) { element.hidden = false; });
    syncSelection(); showState();
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    if (event.detail.elt.hasAttribute("data-live-poll") && (!isLive() || document.hidden)) event.preventDefault();
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    // requestConfig.elt: after a swap htmx fires this on a parent, as detail.elt, instead of the replaced region.
    if (!event.detail.requestConfig.elt.hasAttribute("data-live")) return;
    failed = !event.detail.successful;
    var zone = document.body.getAttribute("data-time-zone") || "UTC";
    if (!failed) updated = new Date().toLocaleTimeString("en-GB", { timeZone: zone, hour12: false });
    showState();
  });
  document.addEventListener("htmx:beforeSwap", function () {
    openDetails = all("details[id][open]").map(function (element) { return element.id; });
  });
  ["htmx:afterSwap", "htmx:oobAfterSwap"].forEach(function (name) {
    document.addEventListener(name, function () {
      openDetails.forEach(function (id) {
        var element = document.getElementById(id);
        if (element && element.tagName === "DETAILS") element.open = true;
      });
      setUp();
    });
  });
  // After settling: htmx's settle step rewrites the class attribute of swapped elements that keep their id.
  document.addEventListener("htmx:afterSettle", function () { noteStates(true); });

  document.addEventListener("htmx:confirm", function (event) {
    var dialog = document.getElementById("confirm-dialog"), elt = event.detail.elt;
    if (!event.detail.question || !dialog) return;
    event.preventDefault();
    document.getElementById("confirm-dialog-title").textContent = elt.getAttribute("data-confirm-title") || "";
    document.getElementById("confirm-dialog-detail").textContent = elt.getAttribute("data-confirm-detail") || "";
    document.getElementById("confirm-dialog-question").textContent = event.detail.question;
    document.getElementById("confirm-dialog-yes").textContent = elt.getAttribute("data-confirm-yes") || "Cancel batch";
    dialog.returnValue = "";
    dialog.onclose = function () { if (dialog.returnValue === "confirm") event.detail.issueRequest(true); };
    dialog.showModal();
  });

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches("[data-submit-on-change]")) target.form.requestSubmit();  // as the status chips do
    if (target.matches("input[data-select-all]")) {
      all("input[data-select]").forEach(function (box) { box.checked = target.checked; });
    } else if (target.matches("[data-live-toggle]")) {
      remember("paused", target.checked ? "" : "1");
      if (target.checked) refreshNow();
    } else if (target.matches("[data-live-interval]")) {
      remember("interval", target.value);
      refreshNow();
    }
    syncSelection(); showState();
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refreshNow();
    showState();
  });
  document.addEventListener("DOMContentLoaded", function () { noteStates(false); setUp(); });
})();
