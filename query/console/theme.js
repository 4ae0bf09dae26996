// The theme chosen in the console (kept in localStorage), else the system's, set on <html>
// before the page paints. A classic script, not a module: modules run after parsing.
(function () {
  var chosen = null;
  try {
    chosen = localStorage.getItem("tally.theme");
  } catch (e) {}
  var dark = chosen ? chosen === "dark" : window.matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = dark ? "dark" : "light";
})();
