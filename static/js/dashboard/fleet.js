// The fleet page: server-rendered tables kept current from WS /ws/fleet, with progress
// (latest loss, points, wait reasons) refreshed from the API every few seconds.

import {
  LiveSocket,
  connectionIndicator,
  debounce,
  formatInt,
  formatLoss,
  formatPercent,
  formatTime,
  getJSON,
  setBadge,
  withQuery,
} from "./live.js";

const root = document.getElementById("fleet");
const config = root.dataset;
const machineBody = document.querySelector("#machines tbody");
const simulationBody = document.querySelector("#simulations tbody");
const ACTIVE = new Set(["scheduled", "running"]);
const OPEN = ["pending", "scheduled", "running"];
const PROGRESS_EVERY_MS = 10_000;
const MAX_PAGES = 5;
const MAX_ROWS = 100;

const FORMATS = {
  latest_loss: formatLoss,
  points: formatInt,
  started_at: formatTime,
  finished_at: formatTime,
  gpu_count: formatInt,
  cpu_cores: formatInt,
  memory: formatInt,
  hourly_cost: (v) => (v === "" || v === null ? "—" : Number(v).toFixed(2)),
};

function simulationUrl(id) {
  return config.simulationPageUrl.replace(/0$/, String(id));
}

function cell(row, field) {
  return row.querySelector(`[data-field="${field}"]`);
}

function setField(row, field, value) {
  const target = cell(row, field);
  if (!target) return;
  if (field === "status") {
    setBadge(target, value);
    return;
  }
  target.dataset.value = value ?? "";
  target.textContent = FORMATS[field] ? FORMATS[field](value ?? "") : (value ?? "");
}

function flash(row) {
  row.classList.remove("flash");
  void row.offsetWidth; // restart the animation
  row.classList.add("flash");
}

function newRow(templateId) {
  return document.getElementById(templateId).content.firstElementChild.cloneNode(true);
}

function dropPlaceholder(body) {
  body.querySelector(".empty-row")?.remove();
}

// --- Machines --------------------------------------------------------------------------------

function machineRow(id) {
  return machineBody.querySelector(`tr[data-id="${id}"]`);
}

function insertMachineRow(row, name) {
  dropPlaceholder(machineBody);
  const after = [...machineBody.rows].find((r) => r.dataset.name.localeCompare(name) > 0);
  machineBody.insertBefore(row, after || null);
  document.getElementById("machine-count").textContent = machineBody.rows.length;
}

function setRunning(row, simulation) {
  const target = cell(row, "running");
  target.dataset.value = simulation ? simulation.id : "";
  target.replaceChildren();
  if (simulation) {
    const link = document.createElement("a");
    link.href = simulationUrl(simulation.id);
    link.textContent = simulation.name || `#${simulation.id}`;
    target.append(link);
  } else {
    const idle = document.createElement("span");
    idle.className = "faint";
    idle.textContent = "idle";
    target.append(idle);
  }
}

function applyMachine(machine) {
  let row = machineRow(machine.id);
  const isNew = !row;
  if (isNew) {
    row = newRow("machine-row");
    row.dataset.id = machine.id;
    row.dataset.name = machine.name;
    insertMachineRow(row, machine.name);
  }
  const changed = cell(row, "status").dataset.status !== machine.status;
  cell(row, "name").textContent = machine.name;
  for (const field of ["status", "gpu_count", "cpu_cores", "memory", "hourly_cost"]) {
    setField(row, field, machine[field]);
  }
  if (machine.cpu !== undefined) {
    cell(row, "model").textContent = `${machine.gpu || "no GPU"} · ${machine.cpu}`;
  }
  if (machine.current_simulation !== undefined) {
    const id = machine.current_simulation;
    const simulation = id ? { id, name: simulationName(id) } : null;
    setRunning(row, simulation);
  } else if (machine.status !== "busy" && cell(row, "running").dataset.value) {
    setRunning(row, null);
  }
  if (changed && !isNew) flash(row);
}

function simulationName(id) {
  const row = simulationRow(id);
  return row ? cell(row, "name").textContent : `#${id}`;
}

/** Machines show what they run: follow a simulation's placement from its own messages. */
function trackPlacement(simulation) {
  for (const row of machineBody.rows) {
    const shows = cell(row, "running")?.dataset.value === String(simulation.id);
    const runsIt = ACTIVE.has(simulation.status) && row.dataset.id === String(simulation.machine);
    if (runsIt) setRunning(row, simulation);
    else if (shows) setRunning(row, null);
  }
}

// --- Simulations -----------------------------------------------------------------------------

function simulationRow(id) {
  return simulationBody.querySelector(`tr[data-id="${id}"]`);
}

function insertSimulationRow(row) {
  dropPlaceholder(simulationBody);
  simulationBody.prepend(row);
  while (simulationBody.rows.length > MAX_ROWS) simulationBody.lastElementChild.remove();
}

/** Applies a socket payload or an API object; returns true when the status changed. */
function applySimulation(simulation) {
  let row = simulationRow(simulation.id);
  const isNew = !row;
  if (isNew) {
    row = newRow("simulation-row");
    row.dataset.id = simulation.id;
    insertSimulationRow(row);
  }
  const changed = cell(row, "status").dataset.status !== simulation.status;
  const name = cell(row, "name");
  name.textContent = simulation.name;
  name.href = simulationUrl(simulation.id);
  const owner = simulation.owner ? ` · ${simulation.owner}` : "";
  if (isNew || simulation.owner !== undefined) {
    cell(row, "ident").textContent = `#${simulation.id}${owner}`;
  }
  setField(row, "status", simulation.status);
  setField(row, "machine", simulation.machine_name || "");
  setField(row, "started_at", simulation.started_at);
  setField(row, "finished_at", simulation.finished_at);
  if (simulation.progress) {
    setField(row, "latest_loss", simulation.progress.latest_loss);
    setField(row, "points", simulation.progress.points);
  }
  const note = cell(row, "note");
  if (simulation.wait_reason !== undefined || simulation.status !== "pending") {
    note.textContent = simulation.wait_reason?.message || simulation.failure_reason || "";
  }
  trackPlacement(simulation);
  if (changed && !isNew) flash(row);
  return changed || isNew;
}

function removeSimulation(id) {
  simulationRow(id)?.remove();
  trackPlacement({ id, status: "deleted", machine: null });
}

// --- Refreshes from the API ------------------------------------------------------------------

async function allPages(url) {
  const items = [];
  for (let page = 0; url && page < MAX_PAGES; page += 1) {
    const body = await getJSON(url);
    items.push(...(body.results ?? body));
    url = body.next ?? null;
  }
  return items;
}

const tiles = document.getElementById("utilisation");

function showUtilisation(u) {
  for (const key of ["machines", "busy", "available", "maintenance"]) {
    tiles.querySelector(`[data-u="${key}"]`).textContent = formatInt(u[key]);
  }
  for (const key of ["utilisation", "gpu_utilisation"]) showUtilisationValue(key, u[key]);
  for (const key of ["busy_hourly_cost", "idle_hourly_cost"]) {
    tiles.querySelector(`[data-u="${key}"]`).textContent = `$${Number(u[key]).toFixed(2)}`;
  }
}

async function refreshUtilisation() {
  showUtilisation(await getJSON(config.utilisationUrl));
}

// Budgets: spend against each owner's monthly budget and GPU cap (GET /budgets).
function money(value) {
  return value === null ? "—" : `$${Number(value).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}

async function refreshBudgets() {
  const budgets = await getJSON(config.budgetsUrl);
  const body = document.querySelector("#budgets tbody");
  body.replaceChildren(
    ...budgets.map((b) => {
      const row = document.createElement("tr");
      const cells = [
        b.user ?? `group ${b.group}`,
        money(b.spent),
        money(b.reserved),
        money(b.monthly_budget),
        formatInt(b.gpus_in_use),
        b.gpu_cap === null ? "—" : formatInt(b.gpu_cap),
      ];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i > 0) td.className = "num";
        td.textContent = text;
        row.append(td);
      });
      return row;
    }),
  );
  document.getElementById("budgets-card").hidden = budgets.length === 0;
}

async function refreshOpenSimulations() {
  const open = await allPages(withQuery(config.simulationsUrl, { status: OPEN }));
  open.forEach(applySimulation);
  document.getElementById("refreshed").textContent = `progress as of ${formatTime(new Date())}`;
}

async function refreshSimulation(id) {
  try {
    applySimulation(await getJSON(`${config.simulationsUrl}/${id}`));
  } catch (error) {
    if (error.status === 404) removeSimulation(id);
  }
}

/** After (re)connecting: whatever changed while the socket was away. */
async function resync() {
  const [machines, recent] = await Promise.all([
    allPages(config.machinesUrl),
    getJSON(config.simulationsUrl),
  ]);
  recent.results.slice().reverse().forEach(applySimulation);
  machines.forEach(applyMachine);
  await Promise.all([refreshOpenSimulations(), refreshUtilisation(), refreshBudgets()]);
}

const utilisationSoon = debounce(() => refreshUtilisation().catch(console.warn), 300);
const pendingDetails = new Set();
const detailsSoon = debounce(() => {
  const ids = [...pendingDetails];
  pendingDetails.clear();
  ids.forEach((id) => refreshSimulation(id));
}, 300);

function onMessage(message) {
  if (message.type === "hello") {
    resync().catch(console.warn);
  } else if (message.type === "machine") {
    applyMachine(message.machine);
    utilisationSoon();
  } else if (message.type === "simulation") {
    if (applySimulation(message.simulation)) {
      pendingDetails.add(message.simulation.id);
      detailsSoon();
    }
  } else if (message.type === "simulation_deleted") {
    removeSimulation(message.id);
  }
}

// --- Start -----------------------------------------------------------------------------------

function formatRenderedCells() {
  for (const target of root.querySelectorAll("tbody [data-field][data-value]")) {
    if (FORMATS[target.dataset.field]) {
      setField(target.closest("tr"), target.dataset.field, target.dataset.value);
    }
  }
  for (const key of ["utilisation", "gpu_utilisation"]) {
    const value = tiles.querySelector(`[data-u="${key}"]`).dataset.value;
    showUtilisationValue(key, value);
  }
}

function showUtilisationValue(key, value) {
  tiles.querySelector(`[data-u="${key}"]`).textContent = formatPercent(value);
  tiles.querySelector(`[data-u-meter="${key}"]`).style.width = formatPercent(value);
}

formatRenderedCells();
new LiveSocket(config.wsPath, {
  onMessage,
  onState: connectionIndicator(document.getElementById("connection")),
}).open();
setInterval(() => {
  refreshOpenSimulations().catch(console.warn);
  refreshBudgets().catch(console.warn);
}, PROGRESS_EVERY_MS);
