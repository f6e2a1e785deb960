/* The job list's progress bars carry their share as data-share (a percentage): the
   Content-Security-Policy refuses style attributes in the markup, not styles set from a script. */
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  document.querySelectorAll(".progress-bar > span[data-share]").forEach(function (node) {
    node.style.width = node.getAttribute("data-share") + "%";
  });
});
