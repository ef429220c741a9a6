// DOM helpers and the renderers of the generation page's parts.

import { fileTree, formatBytes, formatDuration, isTerminal, verificationLine } from "./model.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return node;
}

// Clone a <template> and collect its `data-ref` parts.
export function mountTemplate(id, container) {
  const fragment = document.getElementById(id).content.cloneNode(true);
  const refs = {};
  for (const node of fragment.querySelectorAll("[data-ref]")) refs[node.dataset.ref] = node;
  container.replaceChildren(fragment);
  return refs;
}

export function show(node, visible) {
  node.hidden = !visible;
}

export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

// Re-render `container` without losing the keyboard focus inside it: the element that had
// it is found again by its `data-focus-key`.
export function keepFocus(container, render) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focusKey : undefined;
  render();
  if (key) container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
}

export function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

const STATE_LABELS = { waiting: "waiting", running: "running", done: "done", stopped: "stopped" };

export function renderTimeline(list, model, now) {
  const items = [...model.phases.values()].map((phase) => {
    let detail = "";
    if (phase.state === "done") detail = formatDuration(phase.durationMs);
    else if (phase.state === "running" && phase.startedAt) detail = formatDuration(now - phase.startedAt);
    const failedHere = model.failure && model.failure.phase === phase.name;
    const ended = isTerminal(model);
    let label = STATE_LABELS[phase.state];
    if (failedHere) label = "failed";
    else if (ended && phase.state === "waiting") label = "not run";
    return el(
      "li",
      { class: `phase ${phase.state}`, "data-phase": phase.name, "data-state": phase.state },
      el("span", { class: "dot", "aria-hidden": "true" }),
      el("span", { class: "phase-name" }, el("strong", { text: phase.name }), " ", phase.title),
      el("span", { class: "phase-state" }, detail || label),
      el("span", { class: "visually-hidden", text: detail ? ` (${label})` : "" }),
    );
  });
  if (!items.length) items.push(el("li", { class: "muted", text: "Waiting for an orchestrator to start…" }));
  for (const note of model.notes) items.push(el("li", { class: "note", text: note }));
  list.replaceChildren(...items);
}

export function renderUsage(list, model, now) {
  const rows = [
    ["Provider", model.provider + (model.modelName ? ` (${model.modelName})` : "")],
    ["Files", `${model.files.size} · ${formatBytes(sumSizes(model))}`],
    [
      "Tokens",
      model.llmCalls
        ? `${model.tokensIn.toLocaleString()} in · ${model.tokensOut.toLocaleString()} out (${model.llmCalls} call${model.llmCalls === 1 ? "" : "s"})`
        : "none reported",
    ],
    ["Elapsed", model.startedAt ? formatDuration((model.finishedAt || now) - model.startedAt) : "not started"],
  ];
  list.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
}

function sumSizes(model) {
  let total = 0;
  for (const file of model.files.values()) total += file.size || 0;
  return total;
}

// The file tree. Files are buttons (they open the viewer); with `lockable`, each has a
// checkbox that locks it for the next iteration.
// Folders the reader closed stay closed, and the focus stays where it was.
export function renderTree(nav, { files, selected, locked, lockable, onOpen, onLock }) {
  if (!files.size) {
    nav.replaceChildren(el("p", { class: "muted", text: "No files yet." }));
    return;
  }
  const closed = new Set([...nav.querySelectorAll("details:not([open])")].map((d) => d.dataset.dir));
  const options = { files, selected, locked, lockable, onOpen, onLock, closed };
  const hint = lockable ? el("p", { class: "hint", text: "Tick a file to lock it in the next version." }) : null;
  keepFocus(nav, () => nav.replaceChildren(...[hint, treeList(fileTree(files.keys()), options, "")].filter(Boolean)));
}

function treeList(node, options, prefix) {
  const items = [];
  for (const [name, child] of node.dirs) {
    const dir = `${prefix}${name}/`;
    items.push(
      el(
        "li",
        { class: "dir" },
        el("details", { open: !options.closed.has(dir), "data-dir": dir }, el("summary", { text: `${name}/` }), treeList(child, options, dir)),
      ),
    );
  }
  for (const path of node.files) items.push(fileItem(path, options));
  return el("ul", {}, items);
}

function fileItem(path, { files, selected, locked, lockable, onOpen, onLock }) {
  const info = files.get(path);
  const lock = lockable
    ? el("input", {
        type: "checkbox",
        class: "lock",
        checked: locked.has(path),
        "aria-label": `Lock ${path}`,
        "data-focus-key": `lock:${path}`,
        title: "Lock: keep this file exactly as it is in the next version",
        onchange: (event) => onLock(path, event.target.checked),
      })
    : null;
  return el(
    "li",
    { class: "file", "data-path": path },
    lock,
    el("button", {
      type: "button",
      class: "file-button",
      "aria-current": path === selected ? "true" : undefined,
      "data-focus-key": `open:${path}`,
      text: path.split("/").pop(),
      title: path,
      onclick: () => onOpen(path),
    }),
    el("span", { class: "size", text: formatBytes(info?.size) }),
  );
}

export function eventItem(entry) {
  return el(
    "li",
    { "data-id": String(entry.id), "data-seq": String(entry.seq), "data-type": entry.type },
    el("span", { class: "event-id", text: `#${entry.seq}`, title: `stream id ${entry.id}` }),
    el("time", { datetime: entry.at, text: time(Date.parse(entry.at)) }),
    el("code", { class: "event-type", text: entry.type }),
    el("span", { class: "event-text", text: entry.text }),
  );
}

function diffLineClass(line) {
  if (line.startsWith("+++") || line.startsWith("---")) return "meta";
  if (line.startsWith("@@")) return "hunk";
  if (line.startsWith("+")) return "add";
  if (line.startsWith("-")) return "del";
  return "ctx";
}

// A file a repair round changed (and kept): the rounds, so the diff says the model's fix
// of the version's failing tests is in it, not only the change that was asked for.
function repairBadge(rounds) {
  if (!rounds?.length) return null;
  const which = rounds.length === 1 ? `round ${rounds[0]}` : `rounds ${rounds.join(", ")}`;
  return [
    " ",
    el("span", {
      class: "badge repaired",
      text: `repaired in ${which}`,
      title: "Kiln's repair of the failing tests changed this file",
    }),
  ];
}

export function renderDiff(container, summaryNode, diff) {
  const { added, modified, deleted, unchanged } = diff.summary;
  summaryNode.replaceChildren(
    el("span", { class: "added", text: `${added} added` }), " · ",
    el("span", { class: "modified", text: `${modified} modified` }), " · ",
    el("span", { class: "deleted", text: `${deleted} deleted` }), " · ",
    el("span", { text: `${unchanged} unchanged` }),
  );
  const repaired = diff.files.filter((file) => file.repair_rounds?.length).length;
  if (repaired) summaryNode.append(" · ", el("span", { class: "repaired", text: `${repaired} changed by repair` }));
  const openAll = diff.files.length <= 6;
  container.replaceChildren(
    ...diff.files.map((file) =>
      el(
        "details",
        {
          class: "diff-file",
          open: openAll,
          "data-path": file.path,
          "data-status": file.status,
          "data-repair-rounds": file.repair_rounds?.length ? file.repair_rounds.join(" ") : undefined,
        },
        el(
          "summary",
          {},
          el("span", { class: `badge ${file.status}`, text: file.status }),
          " ",
          el("code", { text: file.path }),
          repairBadge(file.repair_rounds),
        ),
        file.reason ? el("p", { class: "hint", text: `Reason: ${file.reason}` }) : null,
        el(
          "pre",
          { class: "diff" },
          el("code", {}, file.diff.split("\n").filter((line, i, all) => line || i < all.length - 1)
            .map((line) => el("span", { class: diffLineClass(line), text: `${line}\n` }))),
        ),
      ),
    ),
  );
  if (!diff.files.length) container.replaceChildren(el("p", { class: "muted", text: "No file changed." }));
}

// A project's versions as a tree: each version under the one it was made from.
export function renderVersions(container, versions, current) {
  const ids = new Set(versions.map((v) => v.generation_id));
  const children = new Map();
  for (const version of [...versions].sort((a, b) => a.version - b.version)) {
    const parent = ids.has(version.parent_generation_id) ? version.parent_generation_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(version);
  }
  const branch = (parent) =>
    el("ul", { class: "version-tree" }, (children.get(parent) || []).map((version) => versionItem(version, current, children, branch)));
  container.replaceChildren(branch(null));
}

function versionItem(version, current, children, branch) {
  const isCurrent = current && version.generation_id === current.id;
  const status = isCurrent ? current.status : version.status;
  const tests = (isCurrent ? current.verification : version.verification)?.status;
  return el(
    "li",
    { "data-generation": version.generation_id },
    el(
      "a",
      {
        href: `#/g/${version.generation_id}`,
        "aria-current": isCurrent ? "page" : undefined,
        "data-focus-key": `version:${version.generation_id}`,
      },
      el("strong", { text: `v${version.version}` }),
    ),
    " ",
    el("span", { class: "badge", "data-status": status, text: status }),
    tests ? " " : null,
    tests ? el("span", { class: "badge", "data-verdict": tests, text: `tests ${VERDICTS[tests] || tests}` }) : null,
    " ",
    el("span", { class: "prompt", text: version.kind === "iterate" ? version.prompt : "first version" }),
    children.has(version.generation_id) ? branch(version.generation_id) : null,
  );
}

export function renderAudit(container, log) {
  const rows = log.events.map((e) =>
    el(
      "tr",
      {},
      el("td", { text: String(e.stream_seq) }),
      el("td", { text: String(e.seq) }),
      el("td", {}, el("code", { text: e.type })),
      el("td", {}, el("time", { datetime: e.at, text: new Date(e.at).toLocaleTimeString() })),
      el("td", { text: e.progress == null ? "" : `${e.progress}%` }),
      el("td", {}, el("code", { class: "hash", title: e.hash, text: e.hash.slice(0, 12) })),
    ),
  );
  const head = el("tr", {}, ["Stream id", "Seq", "Type", "At", "Progress", "Hash"].map((h) => el("th", { scope: "col", text: h })));
  container.replaceChildren(
    el("div", { class: "table-scroll" }, el("table", { class: "audit-table" }, el("thead", {}, head), el("tbody", {}, rows))),
  );
}

const VERDICTS = {
  running: "running…",
  passed: "passed",
  failed: "failed",
  no_tests: "no tests",
  unverified: "unverified",
};

// The version's own tests as Kiln ran them in its sandbox: a badge, the counts in one line
// ("tests: 20 passed · lint: clean · format: clean") and the first failures.
export function renderVerification(refs, verification) {
  show(refs.verification, Boolean(verification));
  if (!verification) return;
  const v = verification;
  refs["verification-badge"].textContent = VERDICTS[v.status] || v.status;
  refs["verification-badge"].dataset.verdict = v.status;
  let line;
  if (v.status === "running") {
    line = v.round ? `Running them again after repair round ${v.round}…` : "Running them in Kiln's sandbox…";
  } else if (v.status === "unverified") {
    line = v.reason || "They could not be run.";
  } else {
    line = `${verificationLine(v)} (${formatDuration(v.duration_ms)})`;
  }
  refs["verification-line"].textContent = line;
  refs["verification-failures"].replaceChildren(
    ...v.failures.map((f) =>
      el("li", {}, el("code", { text: f.test_id }), el("pre", { text: f.message.split("\n").slice(0, 12).join("\n") })),
    ),
    ...v.compile_errors.map((error) => el("li", {}, el("code", { text: error }))),
  );
}
