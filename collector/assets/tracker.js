/* Tally tracker: sends a page_view for each page (and history navigation) to the collector
 * that served this script. Usage:
 *   <script defer src="https://COLLECTOR/tracker.js" data-site="SITE_ID"></script>
 * Custom events: window.tally("signup", {plan: "pro"}).
 * Honours Do-Not-Track when the tag has data-respect-dnt. */
(function () {
  var script = document.currentScript;
  if (!script) return;
  var site = script.getAttribute("data-site");
  var endpoint = new URL("/v1/events", script.src).href;
  if (!site) return;
  if (script.hasAttribute("data-respect-dnt") && (navigator.doNotTrack === "1" || window.doNotTrack === "1")) return;

  function id(storage, key) {
    try {
      var value = storage.getItem(key);
      if (!value) {
        value = crypto.randomUUID();
        storage.setItem(key, value);
      }
      return value;
    } catch (e) {
      return "";
    }
  }

  function send(type, properties) {
    var event = {
      site_id: site,
      event_type: type,
      url: location.href,
      referrer: document.referrer || "",
      title: document.title || "",
      visitor_id: id(localStorage, "tally_visitor"),
      session_id: id(sessionStorage, "tally_session"),
      properties: properties || {}
    };
    var body = JSON.stringify(event);
    // sendBeacon survives page unloads; it sends text/plain, which the collector accepts.
    if (!(navigator.sendBeacon && navigator.sendBeacon(endpoint, body))) {
      fetch(endpoint, { method: "POST", body: body, keepalive: true, headers: { "content-type": "application/json" } });
    }
  }

  var last = "";
  function pageView() {
    if (location.href === last) return;
    last = location.href;
    send("page_view");
  }

  var push = history.pushState;
  history.pushState = function () {
    push.apply(this, arguments);
    pageView();
  };
  window.addEventListener("popstate", pageView);
  window.tally = send;
  pageView();
})();
