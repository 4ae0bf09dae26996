// What every page of the demo website shares: a call into the tracker's API, and the
// opt-out toggle in the footer.
// Calls the tracker's API. Works before the tracker has loaded (the call waits in the
// queue) and when it never loads (blocked): the page does not depend on it.
function callTally(method) {
  var args = Array.prototype.slice.call(arguments, 1);
  return window.tally[method] ? window.tally[method].apply(null, args) : window.tally.apply(null, arguments);
}
// The opt-out toggle, the same on every page.
(function () {
  var button = document.getElementById("opt-out");
  var optedOut = false;
  try { optedOut = localStorage.getItem("tally_ignore") === "true"; } catch (e) {}
  function render() {
    button.textContent = optedOut ? "Opt in to analytics" : "Opt out of analytics";
    document.getElementById("opt-out-status").textContent = optedOut
      ? "This browser is not counted."
      : "This browser is counted.";
  }
  button.addEventListener("click", function () {
    optedOut = !optedOut;
    callTally(optedOut ? "optOut" : "optIn");
    render();
  });
  render();
})();
