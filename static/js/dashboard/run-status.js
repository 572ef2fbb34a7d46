// The simulation's status badge, its times, why it stopped early, and the machine it runs on,
// kept current from the socket's snapshot and status messages.

import { formatTime, getJSON, setBadge } from "./live.js";

const $ = (id) => document.getElementById(id);

/** Every `[data-time]` element under root, in the page's date-and-time format. */
export function showTimes(root) {
  for (const element of root.querySelectorAll("[data-time]")) {
    element.textContent = formatTime(element.dataset.time);
  }
}

// guards: what stopped the run early, and what of its max_duration that did not spend
function stopNote(simulation) {
  if (!simulation.stopped_by) return "";
  const saved = simulation.saved_cost
    ? ` Saved ${Number(simulation.saved_hours).toFixed(2)} machine-hours ($${Number(simulation.saved_cost).toFixed(2)}).`
    : "";
  return `Stopped by ${simulation.stopped_by}: ${simulation.stop_reason}.${saved}`;
}

function machineFacts(machine) {
  const facts = [
    ["Name", machine.name],
    ["Status", null],
    ["GPU", machine.gpu || "none"],
    ["CPU", machine.cpu],
    ["Cores", machine.cpu_cores],
    ["Memory", `${machine.memory} GB`],
    ["Cost", `$${machine.hourly_cost}/h`],
  ];
  const list = document.createElement("dl");
  list.className = "facts";
  for (const [label, value] of facts) {
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = label;
    if (value === null) {
      const badge = document.createElement("span");
      badge.className = "badge";
      setBadge(badge, machine.status);
      detail.append(badge);
    } else {
      detail.textContent = value;
    }
    list.append(term, detail);
  }
  return list;
}

export class RunStatus {
  /** `machineUrl` ends in 0 where the machine's id goes; `onChange(status)` runs after every
   * status shown. */
  constructor({ root, machineUrl, initial, onChange }) {
    this.root = root;
    this.machineUrl = machineUrl;
    this.status = initial.status;
    this.machineId = initial.machine;
    this.onChange = onChange;
  }

  /** A status, and with `simulation` (the API's resource) its times, note and machine. */
  show(status, simulation = null) {
    this.status = status;
    setBadge($("status"), status);
    if (simulation) {
      $("scheduled-at").dataset.time = simulation.scheduled_at ?? "";
      $("started-at").dataset.time = simulation.started_at ?? "";
      $("finished-at").dataset.time = simulation.finished_at ?? "";
      showTimes(this.root);
      const note = $("status-note");
      if (status !== "pending") {
        const text = stopNote(simulation) || simulation.failure_reason || ""; // guards
        note.textContent = text;
        note.hidden = !text;
      }
      if (simulation.machine && simulation.machine !== this.machineId) {
        this.machineId = simulation.machine;
        this.showMachine(simulation.machine).catch(console.warn);
      }
    }
    this.onChange(status);
  }

  async showMachine(id) {
    const machine = await getJSON(this.machineUrl.replace(/0$/, String(id)));
    $("machine-name").textContent = machine.name;
    $("machine-name").nextElementSibling.textContent =
      `${machine.gpu_count} GPU · $${machine.hourly_cost}/h`;
    $("machine-facts").replaceChildren(machineFacts(machine));
  }
}
