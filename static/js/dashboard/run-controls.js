// The buttons of whoever may change the simulation: start or stop a simulated run (the server
// runs it over a socket for as long as the socket stays open) and cancel.

import { postJSON, socketUrl } from "./live.js";

const FINAL = new Set(["finished", "failed", "cancelled", "timed_out"]);
const STARTABLE = new Set(["pending", "scheduled"]); // where a simulated run can begin
const CLOSE_MESSAGES = {
  4403: "Only the simulation's owner or staff may run it.",
  4401: "You are signed out: reload the page to sign in.",
};

const $ = (id) => document.getElementById(id);

export class RunControls {
  /** `errors`: the page's alert box (live.js); `onStatus(status, simulation?)` shows a status
   * the run socket or the cancel answered. */
  constructor({ runWsPath, cancelUrl, csrfToken }, { status, errors, onStatus }) {
    this.urls = { run: runWsPath, cancel: cancelUrl };
    this.csrfToken = csrfToken;
    this.status = status;
    this.errors = errors;
    this.onStatus = onStatus;
    this.runSocket = null;
    $("run-button").addEventListener("click", () => (this.runSocket ? this.stop() : this.start()));
    $("cancel-button").addEventListener("click", () => this.cancel());
  }

  update(status = this.status) {
    this.status = status;
    const running = Boolean(this.runSocket);
    const button = $("run-button");
    button.hidden = !running && !STARTABLE.has(status);
    button.textContent = running ? "Stop" : "Start simulated run";
    button.classList.toggle("primary", !running);
    button.classList.toggle("stop", running);
    $("cancel-button").hidden = FINAL.has(status);
  }

  start() {
    this.errors.hide();
    const socket = new WebSocket(socketUrl(this.urls.run));
    let refusal = null;
    this.runSocket = socket;
    $("run-button").disabled = true;
    this.update();
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "error") refusal = message.message;
      if (message.type === "run") {
        $("run-button").disabled = false;
        this.onStatus(message.status);
      }
    });
    socket.addEventListener("close", (event) => {
      this.runSocket = null;
      $("run-button").disabled = false;
      if (event.code === 4409) this.errors.show(refusal || "The simulated run was refused.");
      else if (CLOSE_MESSAGES[event.code]) this.errors.show(CLOSE_MESSAGES[event.code]);
      else if (event.code !== 1000) this.errors.show("The simulated run's connection dropped.");
      this.update();
    });
  }

  stop() {
    $("run-button").disabled = true;
    this.runSocket.close(1000);
  }

  async cancel() {
    if (!window.confirm("Cancel this simulation? Its machine is freed at once.")) return;
    this.errors.hide();
    try {
      const simulation = await postJSON(this.urls.cancel, this.csrfToken);
      this.onStatus(simulation.status, simulation);
    } catch (error) {
      this.errors.show(error);
    }
  }
}
