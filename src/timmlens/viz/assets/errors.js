// Counts the page's JavaScript errors on <html data-timmlens-errors> and keeps the last
// message in data-timmlens-last-error: the browser test reads them from the dumped DOM.
(function () {
  var root = document.documentElement, name = "data-timmlens-errors";
  window.addEventListener("error", function (event) {
    root.setAttribute(name, String(Number(root.getAttribute(name)) + 1));
    root.setAttribute("data-timmlens-last-error", String(event.message).slice(0, 300));
  });
})();
