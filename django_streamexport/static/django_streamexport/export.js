// The admin export page: show the arrows that reorder the column list (the form works without).
(function () {
  "use strict";
  var list = document.getElementById("streamexport-columns");
  list.querySelectorAll("button").forEach(function (button) { button.hidden = false; });
  list.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) { return; }
    var item = button.closest("li");
    if (button.classList.contains("move-up") && item.previousElementSibling) {
      list.insertBefore(item, item.previousElementSibling);
    } else if (button.classList.contains("move-down") && item.nextElementSibling) {
      list.insertBefore(item.nextElementSibling, item);
    }
    button.focus();
  });
})();
