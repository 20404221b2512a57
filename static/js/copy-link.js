// "Copy link" buttons: copy the URL in the readonly input named by data-copy-target. Without JavaScript (or a
// clipboard: plain http) the button stays hidden or selects the link, to copy by hand.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-copy-target]").forEach(function (button) {
    var input = document.getElementById(button.dataset.copyTarget);
    var status = button.closest(".share").querySelector(".copy-status");
    var byHand = function () {
      input.focus();
      status.textContent = "Press Ctrl+C (or ⌘C) to copy the selected link.";
    };
    button.hidden = false;
    input.addEventListener("focus", function () { input.select(); });
    button.addEventListener("click", function () {
      if (!navigator.clipboard) return byHand();
      navigator.clipboard.writeText(input.value).then(function () { status.textContent = "Link copied."; }, byHand);
    });
  });
});
