// The simulation page's log panel: the agent's stdout/stderr lines, live. Lines carry sequence
// numbers: after every (re)connect the panel fetches what came after the last one it shows, so
// a dropped socket loses nothing, and a line seen twice (socket and fetch) is shown once.

import { LiveSocket, getJSON, withQuery } from "./live.js";

const KEPT_LINES = 2000; // in the page; the server keeps more (GET /simulations/{id}/logs)
const PAGE = 1000;

export class LogPanel {
  constructor(root) {
    this.url = root.dataset.logsUrl;
    this.output = root.querySelector("#log-lines");
    this.empty = root.querySelector("#log-empty");
    this.follow = root.querySelector("#log-follow");
    this.count = root.querySelector("#log-count");
    this.lastSeq = -1;
    this.received = 0;
    this.fetching = false;
    this.again = false;
    this.socket = new LiveSocket(root.dataset.wsPath, {
      onMessage: (message) => this.onMessage(message),
    });
  }

  start() {
    this.socket.open();
  }

  onMessage(message) {
    if (message.type === "snapshot") {
      this.catchUp(); // connected (again): whatever came while we were away
    } else if (message.type === "logs") {
      if (message.truncated || message.lines[0]?.seq > this.lastSeq + 1) this.catchUp();
      else this.append(message.lines);
    }
  }

  /** Fetch every line after the last one shown; asked again while fetching, it fetches once
   * more afterwards (lines stored after the first request started are not missed). */
  async catchUp() {
    if (this.fetching) {
      this.again = true;
      return;
    }
    this.fetching = true;
    try {
      do {
        this.again = false;
        for (;;) {
          const page = await getJSON(withQuery(this.url, { since: this.lastSeq, limit: PAGE }));
          this.append(page.lines);
          if (!page.has_more) break;
        }
      } while (this.again);
    } catch (error) {
      this.count.textContent = `could not load lines: ${error.message}`;
    } finally {
      this.fetching = false;
    }
  }

  append(lines) {
    const fresh = lines.filter((line) => line.seq > this.lastSeq);
    if (!fresh.length) return;
    const atBottom =
      this.output.scrollTop + this.output.clientHeight >= this.output.scrollHeight - 4;
    const fragment = document.createDocumentFragment();
    for (const line of fresh) {
      const row = document.createElement("div");
      row.className = `log-line ${line.stream}`;
      row.dataset.seq = line.seq;
      row.textContent = line.line; // text, never HTML: the program printed it
      fragment.append(row);
    }
    this.output.append(fragment);
    this.lastSeq = fresh[fresh.length - 1].seq;
    while (this.output.childElementCount > KEPT_LINES) this.output.firstElementChild.remove();
    this.empty.hidden = true;
    this.received += fresh.length;
    this.count.textContent = `${this.received} lines`;
    if (this.follow.checked && atBottom) this.output.scrollTop = this.output.scrollHeight;
  }
}
