// "Copy link" buttons: copy the URL held by the readonly input named in data-copy-target.
// Without JavaScript the button stays hidden and the input still shows the link to copy by hand.
(function () {
  "use strict";

  function announce(button, text) {
    var status = button.closest(".share") && button.closest(".share").querySelector(".copy-status");
    if (status) status.textContent = text;
  }

  function copyBySelection(input) {
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch (error) {
      return false;
    }
  }

  function copy(button, input) {
    var done = function () { announce(button, "Link copied."); };
    var manual = function () {
      if (copyBySelection(input)) done();
      else announce(button, "Press Ctrl+C (or ⌘C) to copy the selected link.");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, manual);
    } else {
      manual();
    }
  }

  function setUp() {
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      var input = document.getElementById(button.dataset.copyTarget);
      if (!input) return;
      button.hidden = false;
      button.addEventListener("click", function () { copy(button, input); });
      input.addEventListener("focus", function () { input.select(); });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
