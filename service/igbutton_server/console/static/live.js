// Live postbacks: an EventSource on /console/live/events. Pausing closes the stream;
// resuming reopens it after the last sequence shown, so nothing stored meanwhile is lost.
// Postback values are only ever set with textContent, never as HTML.
"use strict";

(() => {
  const table = document.getElementById("feed");
  if (!table) return;
  const rows = table.tBodies[0];
  const form = document.getElementById("filters");
  const pause = document.getElementById("pause");
  const stateText = document.getElementById("feed-state");
  const empty = document.getElementById("feed-empty");
  const MAX_ROWS = 500;
  const RETRY_MS = 2000;
  let source = null;
  let last = null; // the last sequence shown
  let serverClock = null; // { serverMs, localMs } from the stream's hello
  let pausedAt = null; // the server's time when paused, if nothing was shown yet

  function setState(state, text) {
    table.dataset.state = state;
    stateText.textContent = text;
  }

  function url() {
    const params = new URLSearchParams();
    if (form.account.value) params.append("account", form.account.value);
    if (form.prefix.value) params.set("prefix", form.prefix.value);
    if (last !== null) params.set("after", String(last));
    else if (pausedAt !== null) params.set("since_ms", String(pausedAt));
    return `${table.dataset.events}?${params}`;
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function show(postback) {
    if (last !== null && postback.sequence <= last) return; // seen before a resume
    last = postback.sequence;
    const tr = document.createElement("tr");
    tr.dataset.sequence = String(postback.sequence);
    tr.append(
      cell(String(postback.sequence)),
      cell(new Date(postback.received_ms).toLocaleTimeString()),
      cell(postback.account_id),
      cell(postback.sender_id),
      cell(postback.title),
      cell(postback.payload),
    );
    if (postback.standby) tr.classList.add("standby");
    rows.prepend(tr);
    while (rows.rows.length > MAX_ROWS) rows.deleteRow(-1);
    empty.hidden = true;
  }

  function close() {
    if (source) source.close();
    source = null;
  }

  function connect() {
    close();
    setState("connecting", "connecting…");
    source = new EventSource(url());
    source.addEventListener("hello", (event) => {
      serverClock = { serverMs: JSON.parse(event.data).now_ms, localMs: Date.now() };
      pausedAt = null;
      setState("live", "live");
    });
    source.addEventListener("postback", (event) => show(JSON.parse(event.data)));
    const mine = source;
    source.addEventListener("error", () => {
      setState("reconnecting", "connection lost, reconnecting…");
      // EventSource retries a broken stream by itself, but gives up on an answer that is
      // not a stream (a 503 while storage is unavailable): then start a new one, later.
      if (mine.readyState === EventSource.CLOSED) {
        setTimeout(() => { if (source === mine) connect(); }, RETRY_MS);
      }
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    if (form.account.value) params.set("account", form.account.value);
    if (form.prefix.value) params.set("prefix", form.prefix.value);
    history.replaceState(null, "", `?${params}`);
    rows.replaceChildren();
    empty.hidden = false;
    last = null;
    pausedAt = null;
    if (pause.getAttribute("aria-pressed") !== "true") connect();
  });

  pause.addEventListener("click", () => {
    const pausing = pause.getAttribute("aria-pressed") !== "true";
    pause.setAttribute("aria-pressed", String(pausing));
    pause.textContent = pausing ? "Resume" : "Pause";
    if (pausing) {
      close();
      // Nothing shown yet: resume by the server's time, a second early in case the clocks
      // drifted (nothing matched before the pause, or it would have been shown).
      if (last === null && serverClock) {
        pausedAt = serverClock.serverMs + (Date.now() - serverClock.localMs) - 1000;
      }
      setState("paused", "paused: nothing is lost, resume to catch up");
    } else {
      connect();
    }
  });

  connect();
})();
