// Refreshes the page's live part (#live) every data-refresh seconds, without reloading the
// page: the server renders the same part for ?fragment=1. No library, no build step.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var seconds = parseInt(live.getAttribute("data-refresh"), 10) || 5;

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("lang");
    return url.toString();
  }

  function refresh() {
    // A person filling a form inside the live part keeps it as it is.
    if (document.hidden || live.contains(document.activeElement) && document.activeElement !== document.body) {
      return schedule();
    }
    fetch(fragmentUrl(), {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
      .then(function (response) {
        if (response.redirected) {  // logged out meanwhile: the login page
          window.location.href = response.url;
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) { live.innerHTML = html; }
      })
      .catch(function () { /* the service restarting: try again at the next tick */ })
      .then(schedule);
  }

  function schedule() { window.setTimeout(refresh, seconds * 1000); }
  schedule();
}());
