/*
 * live.js: keeps a page's live regions current on one timer per page, with htmx doing the requests (no inline
 * scripts, no eval: the CSP forbids both).
 *
 * A live region is an element with `data-live`. While the server wants it refreshed, it also carries
 * `data-live-poll`, `hx-get` (its own URL), `hx-trigger="live-refresh"` and `hx-swap="outerHTML"`. The server drops
 * them (and answers 286) once nothing in it can change, and sets `data-live-retry="<seconds>"` while the upstream API
 * is failing. Other parts of the page follow with hx-swap-oob in the same response. live.js fires `live-refresh` on
 * every polling region at the interval chosen with the page's controls (`[data-live-toggle]` checkbox,
 * `[data-live-interval]` select; remembered in localStorage), and:
 *  - pauses while the tab is hidden, and refreshes at once when it is shown again;
 *  - backs off while requests fail, and waits at least `data-live-retry` seconds;
 *  - holds polling while a POST (a cancel) is in flight, and drops a refresh that was already on its way, so an
 *    answer from before the change never overwrites the change's own answer;
 *  - refreshes at once on a `batches-changed` event (the server sends it with HX-Trigger);
 *  - stops, and says so, when a refresh is redirected (the session ended) instead of swapping a login page in;
 *  - highlights elements with `data-live-key` whose `data-live-state` changed since the last render;
 *  - skips a refresh whose answer is the one already on screen (nothing is re-read to screen readers, focus and
 *    scroll stay put), and keeps `<details id>` elements open across swaps (htmx itself keeps the focus on an
 *    element with an id, which is why the links and controls inside live regions have one);
 *  - keeps the ticks of `input[data-select]` checkboxes across swaps, and keeps `[data-select-all]`,
 *    `[data-selection-count]` and the hx-confirm text of `[data-selection-button]` in step with them;
 *  - shows `[data-js-only]` elements (hidden in the markup for browsers without JavaScript).
 * `[data-live-status]` shows the state in words.
 */
(function () {
  "use strict";

  var ENABLED_KEY = "batchboard.live.enabled";
  var INTERVAL_KEY = "batchboard.live.interval";
  var INTERVALS = [2, 5, 10, 30];
  var DEFAULT_INTERVAL = 5;
  var MAX_BACKOFF_SECONDS = 60;
  var HIGHLIGHT_MS = 2500;

  var timer = null;
  var mutations = 0;
  var refreshWhenIdle = false;
  var liveRequests = new Set();
  var outdated = new WeakSet();
  var failures = 0;
  var signedOut = false;
  var lastUpdate = null;
  var states = new Map();
  var selected = new Set();
  // Each live region's (by id) last answer swapped in; cleared by any change made on the page (a POST).
  var shownAnswers = new Map();
  var openDetails = [];

  function read(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (error) {
      return null;
    }
  }

  function write(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch (error) {
      // Storage can be disabled (private mode); the choice then lasts for this page only.
    }
  }

  function all(selector) {
    return Array.prototype.slice.call(document.querySelectorAll(selector));
  }

  function enabled() {
    return read(ENABLED_KEY) !== "off";
  }

  function intervalSeconds() {
    var value = parseInt(read(INTERVAL_KEY), 10);
    return INTERVALS.indexOf(value) >= 0 ? value : DEFAULT_INTERVAL;
  }

  function pollingRegions() {
    return all("[data-live][data-live-poll]");
  }

  function serverRetrySeconds() {
    return pollingRegions().reduce(function (most, region) {
      var retry = parseFloat(region.getAttribute("data-live-retry"));
      return retry > most ? retry : most;
    }, 0);
  }

  function delaySeconds() {
    var delay = intervalSeconds();
    if (failures) {
      delay = Math.min(delay * Math.pow(2, failures), MAX_BACKOFF_SECONDS);
    }
    return Math.max(delay, serverRetrySeconds());
  }

  function paused() {
    return signedOut || !enabled() || document.hidden;
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = null;
    if (!paused() && !mutations && !liveRequests.size && pollingRegions().length) {
      timer = window.setTimeout(refresh, delaySeconds() * 1000);
    }
    showState();
  }

  function refresh() {
    window.clearTimeout(timer);
    timer = null;
    if (mutations) {
      refreshWhenIdle = true;
    } else if (!paused() && !liveRequests.size) {
      pollingRegions().forEach(function (region) {
        htmx.trigger(region, "live-refresh");
      });
    }
    showState();
  }

  function showState() {
    var state;
    var text;
    var retry = serverRetrySeconds();
    if (signedOut) {
      state = "stopped";
      text = "Signed out: reload the page";
    } else if (!enabled()) {
      state = "paused";
      text = "Paused";
    } else if (document.hidden) {
      state = "paused";
      text = "Paused while hidden";
    } else if (!pollingRegions().length) {
      state = "stopped";
      text = "Up to date: nothing here can change";
    } else if (failures || retry) {
      state = "failing";
      text = (failures ? "Cannot reach batchboard" : "API unavailable") + ": retrying every " + delaySeconds() + " s";
    } else {
      state = "live";
      text = lastUpdate ? "Updated " + lastUpdate.toLocaleTimeString() : "Watching for changes";
    }
    all("[data-live-status]").forEach(function (element) {
      element.textContent = text;
      element.setAttribute("data-state", state);
    });
  }

  function syncControls() {
    all("[data-live-toggle]").forEach(function (toggle) {
      toggle.checked = enabled();
    });
    all("[data-live-interval]").forEach(function (select) {
      select.value = String(intervalSeconds());
    });
  }

  function noteStates(highlight) {
    all("[data-live-key]").forEach(function (element) {
      var key = element.getAttribute("data-live-key");
      var state = element.getAttribute("data-live-state");
      if (highlight && states.has(key) && states.get(key) !== state) {
        element.classList.add("live-changed");
        window.setTimeout(function () {
          element.classList.remove("live-changed");
        }, HIGHLIGHT_MS);
      }
      states.set(key, state);
    });
  }

  function restoreSelection() {
    var present = new Set();
    all("input[data-select]").forEach(function (box) {
      present.add(box.value);
      box.checked = selected.has(box.value);
    });
    // A batch that can no longer be selected (it finished, or left the page) leaves the selection.
    selected.forEach(function (value) {
      if (!present.has(value)) {
        selected.delete(value);
      }
    });
    syncSelection();
  }

  function syncSelection() {
    var boxes = all("input[data-select]");
    var count = boxes.filter(function (box) {
      return box.checked;
    }).length;
    all("input[data-select-all]").forEach(function (box) {
      box.checked = count > 0 && count === boxes.length;
      box.indeterminate = count > 0 && count < boxes.length;
    });
    all("[data-selection-count]").forEach(function (element) {
      element.textContent = String(count);
    });
    all("[data-selection-count-text]").forEach(function (element) {
      element.hidden = count === 0;
    });
    all("[data-selection-button]").forEach(function (button) {
      var question = button.getAttribute(count === 1 ? "data-confirm-one" : "data-confirm-many");
      button.disabled = count === 0;
      if (question) {
        button.setAttribute("hx-confirm", question.replace("{n}", String(count)));
      }
    });
  }

  function verbOf(detail) {
    return ((detail.requestConfig && detail.requestConfig.verb) || "get").toLowerCase();
  }

  function isLiveRequest(detail) {
    return verbOf(detail) === "get" && detail.elt && detail.elt.hasAttribute && detail.elt.hasAttribute("data-live");
  }

  function redirected(detail) {
    if (!detail.xhr || !detail.xhr.responseURL) {
      return false;
    }
    var asked = new URL(detail.pathInfo.requestPath, window.location.href);
    return new URL(detail.xhr.responseURL).pathname !== asked.pathname;
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var detail = event.detail;
    if (isLiveRequest(detail)) {
      if (paused() || mutations) {
        event.preventDefault();
        return;
      }
      liveRequests.add(detail.xhr);
    } else if (verbOf(detail) !== "get") {
      mutations += 1;
      shownAnswers.clear();
      window.clearTimeout(timer);
      liveRequests.forEach(function (xhr) {
        outdated.add(xhr);
      });
    }
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var detail = event.detail;
    openDetails = all("details[id][open]").map(function (element) {
      return element.id;
    });
    if (!liveRequests.has(detail.xhr)) {
      return;
    }
    var region = detail.elt.id;
    if (outdated.has(detail.xhr)) {
      detail.shouldSwap = false;
    } else if (redirected(detail)) {
      detail.shouldSwap = false;
      signedOut = true;
    } else if (detail.shouldSwap && region) {
      if (shownAnswers.get(region) === detail.serverResponse) {
        detail.shouldSwap = false;
      } else {
        shownAnswers.set(region, detail.serverResponse);
      }
    }
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var detail = event.detail;
    if (liveRequests.has(detail.xhr)) {
      liveRequests.delete(detail.xhr);
      if (outdated.has(detail.xhr)) {
        refreshWhenIdle = true;
      } else if (detail.successful) {
        failures = 0;
        lastUpdate = new Date();
      } else {
        failures += 1;
      }
      if (!mutations && refreshWhenIdle) {
        refreshWhenIdle = false;
        refresh();
      } else {
        schedule();
      }
    } else if (verbOf(detail) !== "get") {
      mutations = Math.max(mutations - 1, 0);
      // htmx re-enables hx-disabled-elt elements after the swap; the selection decides again.
      syncSelection();
      if (!mutations && refreshWhenIdle) {
        refreshWhenIdle = false;
        refresh();
      } else {
        schedule();
      }
    }
  });

  function showScriptedControls() {
    all("[data-js-only]").forEach(function (element) {
      element.hidden = false;
    });
  }

  function afterSwap() {
    openDetails.forEach(function (id) {
      var element = document.getElementById(id);
      if (element && element.tagName === "DETAILS") {
        element.open = true;
      }
    });
    showScriptedControls();
    restoreSelection();
    showState();
  }

  document.addEventListener("htmx:afterSwap", afterSwap);
  document.addEventListener("htmx:oobAfterSwap", afterSwap);
  // After settling: htmx's settle step rewrites the class attribute of swapped elements that keep their id.
  document.addEventListener("htmx:afterSettle", function () {
    noteStates(true);
  });

  document.addEventListener("batches-changed", refresh);

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches("input[data-select]")) {
      if (target.checked) {
        selected.add(target.value);
      } else {
        selected.delete(target.value);
      }
      syncSelection();
    } else if (target.matches("input[data-select-all]")) {
      all("input[data-select]").forEach(function (box) {
        box.checked = target.checked;
        if (target.checked) {
          selected.add(box.value);
        } else {
          selected.delete(box.value);
        }
      });
      syncSelection();
    } else if (target.matches("[data-live-toggle]")) {
      write(ENABLED_KEY, target.checked ? "on" : "off");
      syncControls();
      failures = 0;
      if (target.checked) {
        refresh();
      } else {
        schedule();
      }
    } else if (target.matches("[data-live-interval]")) {
      write(INTERVAL_KEY, target.value);
      syncControls();
      schedule();
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      schedule();
    } else {
      refresh();
    }
  });

  // Another tab changed the Live settings: follow them here too.
  window.addEventListener("storage", function (event) {
    if (event.key === ENABLED_KEY || event.key === INTERVAL_KEY) {
      syncControls();
      schedule();
    }
  });

  function init() {
    showScriptedControls();
    syncControls();
    noteStates(false);
    // The browser may have restored ticks (back/forward navigation).
    all("input[data-select]:checked").forEach(function (box) {
      selected.add(box.value);
    });
    syncSelection();
    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
