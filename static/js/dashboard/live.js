// Shared by the dashboard pages: a WebSocket that reconnects by itself, JSON fetches with the
// API's error shape, and the number/time formats the tables and tiles use.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
// Close codes after which retrying cannot help (see simsched/socket_auth.py).
const FINAL_CLOSE_CODES = {
  4401: "signed out: reload to sign in",
  4403: "not allowed",
  4404: "simulation not found",
};

export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${path}`;
}

/**
 * A socket that reopens after it drops: 0.5 s, then doubling up to 10 s between tries, back to
 * 0.5 s once a connection has delivered a message. `onState(state, detail)` drives an indicator:
 * "connecting", "live", "reconnecting" (detail: seconds until the next try) or "closed".
 */
export class LiveSocket {
  constructor(path, { onMessage, onState = () => {} }) {
    this.path = path;
    this.onMessage = onMessage;
    this.onState = onState;
    this.delay = FIRST_DELAY_MS;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
  }

  open() {
    this.onState("connecting");
    const socket = new WebSocket(socketUrl(this.path));
    this.socket = socket;
    socket.addEventListener("message", (event) => {
      this.delay = FIRST_DELAY_MS;
      this.onState("live");
      this.onMessage(JSON.parse(event.data));
    });
    socket.addEventListener("close", (event) => this.closed(socket, event.code));
  }

  closed(socket, code) {
    if (socket !== this.socket || this.stopped) return;
    if (FINAL_CLOSE_CODES[code]) {
      this.onState("closed", FINAL_CLOSE_CODES[code]);
      return;
    }
    const wait = this.delay;
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this.onState("reconnecting", wait / 1000);
    this.timer = setTimeout(() => this.open(), wait);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close(1000);
  }
}

/** Shows a LiveSocket's state in a `.conn` element. */
export function connectionIndicator(element) {
  const label = element.querySelector(".conn-label");
  return (state, detail) => {
    element.dataset.state = state;
    label.textContent = {
      connecting: "connecting…",
      live: "live",
      reconnecting: `reconnecting in ${detail}s`,
      closed: detail || "disconnected",
    }[state];
  };
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `Request failed (${status})`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function parse(response) {
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function getJSON(url) {
  const response = await fetch(url, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  return parse(response);
}

/** A session-authenticated POST: Django wants the CSRF token in a header. */
export async function postJSON(url, csrfToken, body = null) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: {
      Accept: "application/json",
      "Content-Type": "application/json",
      "X-CSRFToken": csrfToken,
    },
    body: body === null ? null : JSON.stringify(body),
  });
  return parse(response);
}

export function withQuery(url, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (Array.isArray(value)) value.forEach((v) => query.append(key, v));
    else if (value !== null && value !== undefined && value !== "") query.append(key, value);
  }
  const text = query.toString();
  return text ? `${url}?${text}` : url;
}

// --- Formats ---------------------------------------------------------------------------------

const DASH = "—";
const integer = new Intl.NumberFormat("en-US");
export const dateTime = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

export function formatLoss(value) {
  if (value === null || value === undefined || value === "" || Number.isNaN(Number(value))) {
    return DASH;
  }
  const v = Number(value);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(3);
  return v.toPrecision(5);
}

export function formatInt(value) {
  return value === null || value === undefined || value === "" ? DASH : integer.format(value);
}

export function formatTime(iso) {
  if (!iso) return DASH;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? DASH : dateTime.format(date);
}

export function formatPercent(fraction) {
  return `${(Number(fraction) * 100).toFixed(1)}%`;
}

export function formatMoney(value) {
  return `$${Number(value).toFixed(2)}`;
}

export function setBadge(badge, status) {
  badge.className = badge.className.replace(/\bstatus-\S+/g, "").trim();
  badge.classList.add(`status-${status}`);
  badge.dataset.status = status;
  badge.textContent = status;
}

/** A page's `.alert` box: `show(error)` with an Error or a message, `hide()`. */
export function alertBox(element) {
  return {
    show: (error) => {
      element.textContent = typeof error === "string" ? error : error.message;
      element.hidden = false;
    },
    hide: () => {
      element.hidden = true;
    },
  };
}

/** Calls `fn` once, `ms` after the last of a burst of calls. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
