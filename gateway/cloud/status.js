// The status page of cpmi-gateway: asks for an API token once (kept in sessionStorage,
// so in this tab only), fetches /v1/status every 5 s and shows it. Data is only ever
// put in the page as text (textContent), never as markup.
"use strict";

(function () {
  const TOKEN_KEY = "cpmi-gateway.status-token";
  const REFRESH_MS = 5000;
  const FETCH_TIMEOUT_MS = 10000;
  const MAX_ROWS = 1000;

  const $ = (id) => document.getElementById(id);
  let generation = 0; // bumped when the token changes: stale refresh loops stop
  let timer = null;
  let last = null; // {status, fetchedAt (client ms), skew (server s - client s)}
  let lastUpdated = null;

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function storeToken(token) {
    try {
      if (token === null) {
        sessionStorage.removeItem(TOKEN_KEY);
      } else {
        sessionStorage.setItem(TOKEN_KEY, token);
      }
    } catch (e) {
      // Storage refused (private mode): the token lasts as long as the page.
    }
  }

  let token = storedToken();

  // --- formatting -------------------------------------------------------------

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (seconds < 1) return "less than 1 s";
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    const h = Math.floor(m / 60);
    if (h < 24) return h + " h " + (m % 60) + " min";
    const d = Math.floor(h / 24);
    return d + " d " + (h % 24) + " h";
  }

  function serverNow() {
    return Date.now() / 1000 + (last ? last.skew : 0);
  }

  function ago(text) {
    if (!text) return "never";
    const at = Date.parse(text) / 1000;
    if (Number.isNaN(at)) return String(text);
    const age = serverNow() - at;
    return age < 1 ? "just now" : duration(age) + " ago";
  }

  function ms(value) {
    return value === null || value === undefined ? "–" : value + " ms";
  }

  function setText(id, text, className) {
    const element = $(id);
    element.textContent = text;
    if (className !== undefined) element.className = className;
  }

  function timeCell(text) {
    const cell = document.createElement("td");
    if (text) {
      const time = document.createElement("time");
      time.dateTime = text;
      time.title = text;
      time.textContent = ago(text);
      cell.appendChild(time);
    } else {
      cell.textContent = "never";
    }
    return cell;
  }

  function cell(text, className) {
    const element = document.createElement("td");
    element.textContent = text === null || text === undefined ? "" : String(text);
    if (className) element.className = className;
    return element;
  }

  // --- showing ----------------------------------------------------------------

  function showBanner(message) {
    const banner = $("error");
    banner.textContent = message;
    banner.hidden = !message;
  }

  function askForToken(message) {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    token = null;
    storeToken(null);
    $("status").hidden = true;
    $("forget").hidden = true;
    showBanner("");
    const error = $("token-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("token-form").hidden = false;
    $("token").value = "";
    $("token").focus();
  }

  function forwardingText(forwarding) {
    if (forwarding.note) return forwarding.note;
    const backlog = forwarding.backlog || 0;
    if (backlog === 0) return "caught up (" + forwarding.sink + ")";
    const records = backlog + (backlog === 1 ? " record" : " records");
    if (forwarding.lagSeconds === null || forwarding.lagSeconds === undefined) {
      return records + " to forward";
    }
    return duration(forwarding.lagSeconds) + " behind, " + records + " to forward";
  }

  function latencyText(commands) {
    if (!commands.count) return "no commands yet";
    return (
      "p50 " + ms(commands.p50Ms) + ", p99 " + ms(commands.p99Ms) +
      " (max " + ms(commands.maxMs) + ", last " + commands.count + " commands)"
    );
  }

  function renderSummary(status) {
    const gateway = status.gateway;
    setText("gateway-id", gateway.id);
    document.title = gateway.id + " – cpmi-gateway status";
    const ready = status.ready;
    setText("ready", (ready.ok ? "ready" : "NOT READY") + (ready.reason ? " – " + ready.reason : ""),
      ready.ok ? "good" : "bad");
    setText("uptime", duration(gateway.uptimeSeconds) + " (since " + gateway.started + ")");
    const journal = status.journal;
    let journalText = "seq " + journal.lastSeq;
    if (journal.committedSeq !== journal.lastSeq) journalText += " (committed " + journal.committedSeq + ")";
    if (journal.problem) journalText += " – " + journal.problem;
    setText("journal", journalText, journal.problem ? "bad" : "");
    setText("forwarding", forwardingText(status.forwarding));
    // [[forward]] sinks, each with its own backlog; the NATS connection ([cluster]).
    const forwards = status.forwards || [];
    $("forwards-row").hidden = forwards.length === 0;
    setText("forwards", forwards.map(function (f) {
      return f.name + ": " + forwardingText(f);
    }).join("; "));
    const nats = status.nats;
    $("nats-row").hidden = !nats;
    if (nats) {
      setText("nats", nats.state + (nats.error ? " – " + nats.error : "") +
        (nats.reconnects ? " (" + nats.reconnects + " reconnects)" : ""),
        nats.state === "connected" ? "good" : "bad");
    }
    setText("latency", latencyText(status.commands));
    setText("lots-online", status.lots.online);
    setText("lots-offline", status.lots.offline, status.lots.offline ? "bad" : "");
  }

  function renderLots() {
    if (!last) return;
    const items = last.status.lots.items;
    const wanted = $("filter").value.trim().toLowerCase();
    const matching = wanted ? items.filter((lot) => lot.parkCode.toLowerCase().includes(wanted)) : items;
    const body = document.createElement("tbody");
    for (const lot of matching.slice(0, MAX_ROWS)) {
      const row = document.createElement("tr");
      row.className = lot.connected ? "is-online" : "is-offline";
      row.appendChild(cell(lot.parkCode));
      row.appendChild(cell(lot.dialect));
      row.appendChild(cell(lot.connected ? "online" : "offline", "state " + (lot.connected ? "online" : "offline")));
      row.appendChild(timeCell(lot.since));
      row.appendChild(timeCell(lot.lastSeen));
      row.appendChild(cell(lot.peer));
      row.appendChild(cell(lot.backlog, "number"));
      body.appendChild(row);
    }
    $("lots").replaceChild(body, $("lots").tBodies[0]);
    let shown = "Showing " + Math.min(matching.length, MAX_ROWS) + " of " + items.length + " lots";
    if (matching.length > MAX_ROWS) shown += " (the table shows at most " + MAX_ROWS + "; filter to find others)";
    setText("lots-shown", shown + ".");
  }

  function renderRejections(rejections) {
    const body = document.createElement("tbody");
    for (const rejection of rejections) {
      const row = document.createElement("tr");
      row.appendChild(timeCell(rejection.time));
      row.appendChild(cell(rejection.event));
      row.appendChild(cell(rejection.park));
      row.appendChild(cell(rejection.code));
      row.appendChild(cell(rejection.result));
      row.appendChild(cell(rejection.reason));
      body.appendChild(row);
    }
    $("rejections").replaceChild(body, $("rejections").tBodies[0]);
    $("rejections").hidden = rejections.length === 0;
    $("no-rejections").hidden = rejections.length !== 0;
  }

  function render(status) {
    renderSummary(status);
    renderLots();
    renderRejections(status.rejections);
    $("token-form").hidden = true;
    $("status").hidden = false;
    $("forget").hidden = false;
  }

  function showUpdated() {
    if (lastUpdated === null) {
      setText("updated", "");
      return;
    }
    const seconds = Math.max(0, Math.round((Date.now() - lastUpdated) / 1000));
    setText("updated", "updated " + seconds + " s ago");
  }

  // --- fetching ---------------------------------------------------------------

  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (e) {
      // not JSON: the status line says enough
    }
    return response.statusText || "";
  }

  async function refresh() {
    const mine = generation;
    const controller = new AbortController();
    const abort = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const sent = Date.now();
      const response = await fetch("/v1/status", {
        headers: { Authorization: "Bearer " + token, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        signal: controller.signal,
      });
      if (mine !== generation) return;
      if (response.status === 401 || response.status === 403) {
        const detail = await errorOf(response);
        if (mine !== generation) return;
        askForToken("The gateway refused the token (" + response.status + (detail ? ": " + detail : "") +
          "). Enter a token with the read role.");
        return;
      }
      if (!response.ok) {
        const detail = await errorOf(response);
        throw new Error("the gateway answered " + response.status + (detail ? ": " + detail : ""));
      }
      const status = await response.json();
      if (mine !== generation) return;
      const received = Date.now();
      const serverSeconds = Date.parse(status.gateway.now) / 1000;
      const skew = Number.isNaN(serverSeconds) ? 0 : serverSeconds - (sent + received) / 2000;
      last = { status: status, skew: skew };
      lastUpdated = received;
      showBanner("");
      render(status);
      showUpdated();
    } catch (error) {
      if (mine !== generation) return;
      const reason = error && error.name === "AbortError" ? "no answer in time" : String(error && error.message || error);
      showBanner("Could not fetch the status: " + reason + ". Retrying every " + REFRESH_MS / 1000 + " s" +
        (lastUpdated === null ? "." : "; what is shown is from before."));
    } finally {
      clearTimeout(abort);
      if (mine === generation) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function start() {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $("token-form").hidden = true;
    $("token-error").hidden = true;
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const entered = $("token").value.trim();
      if (!entered) return;
      token = entered;
      storeToken(token);
      $("token").value = "";
      start();
    });
    $("forget").addEventListener("click", () => askForToken(""));
    $("filter").addEventListener("input", renderLots);
    setInterval(showUpdated, 1000);
    if (token) {
      start();
    } else {
      askForToken("");
    }
  });
})();
