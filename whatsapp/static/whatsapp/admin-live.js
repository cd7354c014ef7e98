/* Live updates for the connection-health admin pages (no library).
 *
 * The server sends hints over a WebSocket ("company N's session changed");
 * on a hint the page re-reads itself and swaps every [data-live-region]
 * element for its fresh version, so all rendering stays on the server.
 * While the WebSocket is down, the page polls a small JSON endpoint and
 * re-reads itself when the answer changes. The page also re-reads itself when
 * the WebSocket opens (a change may have landed between rendering and then),
 * and, while live, polls the same endpoint slowly for what sends no hint
 * (message counters, recent messages and their jobs).
 * Forms with data-confirm ask before they are sent (Log out). */
(function () {
  "use strict";
  if (document.readyState === "loading") {  /* loaded from <head> with the admin's media */
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }

  /* Once the page is being left (a form sent, a link followed) it re-reads nothing more:
   * a re-read racing the navigation would take the next page's message ("Restart
   * requested ...") out of the session before that page shows it. */
  var leaving = false;
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  }, true);
  document.addEventListener("submit", function (event) {  /* after the form's own checks */
    if (!event.defaultPrevented) { leaving = true; }
  });
  window.addEventListener("pagehide", function () { leaving = true; });
  window.addEventListener("beforeunload", function () { leaving = true; });

  function start() {
    var root = document.querySelector("[data-wa-live]");
    if (!root) { return; }
    var wsPath = root.getAttribute("data-wa-live-ws");
    var pollUrl = root.getAttribute("data-wa-live-poll");
    var pollMs = Math.max(1000, parseFloat(root.getAttribute("data-wa-live-poll-seconds") || "5") * 1000);
    var company = root.getAttribute("data-wa-live-company") || "";
    /* The hints this page follows (the chat page: "chat.changed"). */
    var events = (root.getAttribute("data-wa-live-events") || "session.changed").split(" ");
    var statusEl = document.querySelector("[data-wa-live-status]");
    var socket = null, pollTimer = null, refreshTimer = null, lastPoll = null, retryMs = 1000;
    /* The session page (one company) ticks fast: a message arriving shows within a
     * second. Lists and the dashboard (every company: a bigger query) tick slowly. */
    var tickSeconds = parseFloat(root.getAttribute("data-wa-live-tick-seconds") || "0.5");
    var tickMs = company ? Math.max(250, tickSeconds * 1000) : Math.max(2000, pollMs * 2);
    var tickTimer = null, lastTick = null, refreshing = false, again = false;
    var refreshes = 0;

    function setMode(mode) {
      root.setAttribute("data-wa-live-mode", mode);
      if (statusEl) {
        statusEl.textContent = mode === "websocket" ? "live" : (mode === "polling" ? "polling" : "connecting…");
        statusEl.className = "wa-live-status wa-live-" + mode;
      }
    }

    function selectionActive(region) {
      return region.querySelector("input.action-select:checked, input:focus, select:focus") !== null;
    }

    function refresh() {
      if (leaving) { return; }
      if (refreshing) { again = true; return; }
      refreshing = true;
      fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (resp) { return resp.ok ? resp.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var fresh = new DOMParser().parseFromString(html, "text/html");
          document.querySelectorAll("[data-live-region]").forEach(function (region) {
            var next = region.id && fresh.getElementById(region.id);
            if (next && !selectionActive(region)) { region.innerHTML = next.innerHTML; }
          });
          refreshes += 1;
          root.setAttribute("data-wa-live-refreshes", String(refreshes));
        })
        .catch(function () { /* the next hint or poll tries again */ })
        .then(function () {
          refreshing = false;
          if (again) { again = false; refresh(); }
        });
    }

    function scheduleRefresh() {  /* hints in a burst: one re-read */
      window.clearTimeout(refreshTimer);
      refreshTimer = window.setTimeout(refresh, 50);
    }

    function poll() {
      fetch(pollUrl, { credentials: "same-origin" })
        .then(function (resp) { return resp.ok ? resp.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          var seen = JSON.stringify(data.sessions);
          /* The first answer after polling starts has nothing to compare with, and a
           * change may have landed between rendering the page and that answer: re-read
           * the page once then, or the page would show the old state for good. */
          if (lastPoll === null || seen !== lastPoll) { scheduleRefresh(); }
          lastPoll = seen;
        })
        .catch(function () {});
    }

    function tick() {  /* while live: what sends no hint */
      var sep = pollUrl.indexOf("?") === -1 ? "?" : "&";
      fetch(pollUrl + sep + "live=1", { credentials: "same-origin" })
        .then(function (resp) { return resp.ok ? resp.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          var seen = JSON.stringify(data.sessions);
          if (lastTick !== null && seen !== lastTick) { scheduleRefresh(); }
          lastTick = seen;
        })
        .catch(function () {});
    }

    function startTicking() {
      if (tickTimer !== null) { return; }
      lastTick = null;
      tick();
      tickTimer = window.setInterval(tick, tickMs);
    }

    function stopTicking() {
      if (tickTimer !== null) { window.clearInterval(tickTimer); tickTimer = null; }
    }

    function startPolling() {
      if (pollTimer !== null) { return; }
      setMode("polling");
      lastPoll = null;
      poll();
      pollTimer = window.setInterval(poll, pollMs);
    }

    function stopPolling() {
      if (pollTimer !== null) { window.clearInterval(pollTimer); pollTimer = null; }
    }

    function connect() {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      try {
        socket = new WebSocket(scheme + window.location.host + wsPath);
      } catch (err) {
        startPolling();
        return;
      }
      socket.onopen = function () {
        stopPolling();
        retryMs = 1000;
        setMode("websocket");
        scheduleRefresh();  /* what changed before the socket listened */
        startTicking();
      };
      socket.onmessage = function (event) {
        var msg;
        try { msg = JSON.parse(event.data); } catch (err) { return; }
        if (events.indexOf(msg.event) === -1) { return; }
        if (company && String(msg.company_id) !== company) { return; }
        scheduleRefresh();
      };
      socket.onclose = function () {
        var wasLive = root.getAttribute("data-wa-live-mode") === "websocket";
        stopTicking();
        startPolling();
        if (wasLive) { scheduleRefresh(); }  /* catch up on what the outage hid */
        window.setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 30000);
      };
    }

    setMode("connecting");
    if (wsPath && "WebSocket" in window) { connect(); } else { startPolling(); }
  }
})();
