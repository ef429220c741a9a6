// The generation page: live progress, the result, iteration, versions and the diff.
// Everything on it is folded from the generation's own events; nothing is guessed.

import { api, apiText, downloadBlob, newIdempotencyKey, paths } from "./api.js";
import { applyEvent, createModel, formatBytes, formatDuration, isTerminal } from "./model.js";
import { renderRepairs } from "./repairs.js";
import { Watcher } from "./stream.js";
import { highlightInto } from "./syntax.js";
import {
  el,
  eventItem,
  keepFocus,
  mountTemplate,
  renderAudit,
  renderDiff,
  renderTimeline,
  renderVerification,
  renderTree,
  renderUsage,
  renderVersions,
  show,
  showError,
} from "./views.js";

const CONNECTION_TEXT = {
  connecting: "Connecting to the live stream…",
  reconnecting: "Connection lost — reconnecting… The generation keeps running on the server.",
};

export class GenerationPage {
  // accepted: the 201 body of the POST that created it (its stream_url carries a token).
  constructor(container, generationId, { accepted, navigate, onAuthError }) {
    this.id = generationId;
    this.accepted = accepted && accepted.generation_id === generationId ? accepted : null;
    this.navigate = navigate;
    this.onAuthError = onAuthError;
    this.model = createModel(generationId);
    this.refs = mountTemplate("tpl-generation", container);
    this.locked = new Set();
    this.selected = null;
    this.versions = null;
    this.treeKey = "";
    this.versionsKey = "";
    this.frame = 0;
    this.watcher = null;
    this.destroyed = false;
    this.wire();
  }

  wire() {
    const r = this.refs;
    r.cancel.addEventListener("click", () => this.cancel());
    r.download.addEventListener("click", () => this.download());
    r["iterate-form"].addEventListener("submit", (event) => this.iterate(event));
    r["audit-load"].addEventListener("click", () => this.loadAudit());
    r.examples.addEventListener("click", (event) => {
      const example = event.target.closest("button");
      if (!example) return;
      const prompt = r["iterate-form"].elements.prompt;
      prompt.value = example.textContent;
      prompt.focus();
    });
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  async start() {
    this.render();
    const streamUrl = this.accepted ? this.accepted.stream_url : await this.firstStreamUrl();
    if (!streamUrl || this.destroyed) return;
    this.watcher = new Watcher({
      generationId: this.id,
      streamUrl,
      renewToken: async () => (await api(`${paths.generation(this.id)}/stream-token`, { method: "POST" })).sse_token,
      onEvent: (event, id) => this.receive(event, id),
      onConnection: (state) => this.connection(state),
      onFatal: (error) => this.fatal(error),
    });
    this.watcher.start();
  }

  // After a reload the page has no token: ask for one (retrying while the network is down).
  async firstStreamUrl() {
    for (let attempt = 0; !this.destroyed; attempt += 1) {
      try {
        return (await api(`${paths.generation(this.id)}/stream-token`, { method: "POST" })).stream_url;
      } catch (error) {
        if (!error.isNetwork) {
          this.fatal(error);
          return null;
        }
        this.connection("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * 2 ** attempt)));
      }
    }
    return null;
  }

  destroy() {
    this.destroyed = true;
    this.watcher?.stop();
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
  }

  receive(event, id) {
    const model = this.model;
    if (!applyEvent(model, event, id)) return;
    this.refs.events.append(eventItem(model.events[model.events.length - 1]));
    if (event.type === "generation.requested") this.loadVersions();
    if (isTerminal(model)) this.finished();
    this.invalidate();
  }

  finished() {
    this.loadVersions();
    if (this.model.parentId) this.loadDiff();
    if (this.selected) this.openFile(this.selected);
  }

  connection(state) {
    const text = CONNECTION_TEXT[state];
    this.refs.connection.textContent = text || "";
    this.refs.connection.dataset.state = state;
    show(this.refs.connection, Boolean(text));
  }

  fatal(error) {
    this.connection("ended");
    if (error.status === 401) this.onAuthError(error.detail);
    else showError(this.refs["page-error"], error.detail);
  }

  tick() {
    if (!isTerminal(this.model) || this.model.retry) this.invalidate();
  }

  // Many events can arrive at once (a replay): draw at most once per frame.
  invalidate() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }
  }

  render() {
    if (this.destroyed) return;
    const now = Date.now();
    this.renderHeader();
    this.renderProgress();
    this.renderRetry(now);
    this.renderOutcome();
    renderVerification(this.refs, this.model.verification);
    renderRepairs(this.refs.repairs, this.model);
    renderTimeline(this.refs.timeline, this.model, now);
    renderUsage(this.refs.usage, this.model, now);
    this.renderFiles();
    this.refs["event-count"].textContent = `(${this.model.events.length})`;
    this.renderVersionTree();
  }

  // Drawn again only when a version or a status changes, so a focused link keeps its focus.
  renderVersionTree() {
    if (!this.model.version) return;
    const versions = this.versions || [this.ownVersion()];
    const key = JSON.stringify([
      this.model.status,
      this.model.verification?.status,
      versions.map((v) => [v.generation_id, v.status, v.verification?.status]),
    ]);
    if (key === this.versionsKey) return;
    this.versionsKey = key;
    keepFocus(this.refs.versions, () => renderVersions(this.refs.versions, versions, this.model));
  }

  renderHeader() {
    const { model, refs } = this;
    const name = model.projectName || "Generation";
    refs.title.textContent = model.version ? `${name} · v${model.version}` : name;
    refs.subtitle.textContent =
      model.kind === "iterate" ? `Change: “${model.prompt}”` : model.prompt || "";
    refs.status.textContent = model.status;
    refs.status.dataset.status = model.status;
    document.title = `Kiln — ${name}${model.version ? ` v${model.version}` : ""} (${model.progress}%)`;
    show(refs.cancel, !isTerminal(model));
    show(refs.download, isTerminal(model) && model.files.size > 0);
    show(refs["iterate-panel"], model.status === "completed");
  }

  renderProgress() {
    const { model, refs } = this;
    const phase = model.phase ? model.phases.get(model.phase) : null;
    let label = "Waiting for an orchestrator…";
    if (model.status === "completed") label = "Completed";
    else if (model.status === "failed") label = `Stopped in ${model.failure?.phase || "no phase"}`;
    else if (model.status === "cancelled") label = "Cancelled";
    else if (phase) label = `${phase.name} — ${phase.title}`;
    else if (model.status === "running") label = "Starting…";
    refs.progress.setAttribute("aria-valuenow", String(model.progress));
    refs.progress.setAttribute("aria-valuetext", `${model.progress}% — ${label}`);
    refs.progress.dataset.status = model.status;
    refs.bar.style.width = `${model.progress}%`;
    refs.percent.textContent = `${model.progress}%`;
    refs.phase.textContent = label;
  }

  renderRetry(now) {
    const retry = this.model.retry;
    show(this.refs.retry, Boolean(retry));
    if (!retry) return;
    const remaining = Math.max(0, Math.min(retry.delayS, Math.ceil(retry.delayS - (now - retry.atMs) / 1000)));
    const when = remaining > 0 ? `retrying in ${remaining} s` : "retrying now…";
    this.refs.retry.textContent =
      retry.reason === "rate_limited"
        ? `Rate limited, ${when} (attempt ${retry.attempt}).`
        : `The ${retry.phase} phase hit a problem (${retry.reason.replaceAll("_", " ")}); ${when} (attempt ${retry.attempt}).`;
  }

  renderOutcome() {
    const { model, refs } = this;
    show(refs.failure, Boolean(model.failure));
    if (model.failure) {
      const failure = model.failure;
      refs["failure-title"].textContent = failure.phase
        ? `The generation failed in the ${failure.phase} phase`
        : "The generation failed";
      refs["failure-message"].textContent = failure.message;
      refs["failure-hint"].textContent = failure.retryable
        ? "Trying again later may help."
        : "Trying again unchanged will not help.";
      const kept = [...model.files.keys()].sort();
      refs["failure-kept"].textContent = kept.length
        ? `${kept.length} file${kept.length === 1 ? " was" : "s were"} kept and can be downloaded:`
        : "No file had been written yet.";
      refs["failure-files"].replaceChildren(...kept.map((path) => el("li", {}, el("code", { text: path }))));
    }
    show(refs.cancelled, Boolean(model.cancelled));
    if (model.cancelled) {
      const c = model.cancelled;
      refs.cancelled.textContent = `Cancelled by ${c.by}${c.phase ? ` during ${c.phase}` : ""}${c.reason ? ` (${c.reason})` : ""}. ${model.files.size} file(s) kept.`;
    }
    show(refs.completed, Boolean(model.completed));
    if (model.completed) {
      const c = model.completed;
      const v = model.verification;
      // Complete means every file is kept; whether the version works is its tests' verdict.
      const failing = v?.status === "failed";
      refs.completed.classList.toggle("done", !failing);
      refs.completed.classList.toggle("tests-failed", failing);
      refs.completed.textContent = `Version ${model.version} is complete: ${c.fileCount} files, ${formatBytes(c.totalBytes)}, in ${formatDuration(c.durationMs)}.`
        + (failing ? ` Its own tests fail (${v.headline || "see the verification"}); the files are kept and can be downloaded.` : "");
    }
  }

  renderFiles() {
    const { model, refs } = this;
    const lockable = model.status === "completed";
    refs["file-count"].textContent = `(${model.files.size})`;
    const key = `${model.filesVersion}:${lockable}`;
    if (key === this.treeKey) return;
    this.treeKey = key;
    renderTree(refs.tree, {
      files: model.files,
      selected: this.selected,
      locked: this.locked,
      lockable,
      onOpen: (path) => this.openFile(path),
      onLock: (path, on) => this.lock(path, on),
    });
  }

  async openFile(path) {
    this.selected = path;
    for (const button of this.refs.tree.querySelectorAll(".file-button")) {
      button.toggleAttribute("aria-current", button.closest("li").dataset.path === path);
    }
    const info = this.model.files.get(path);
    const code = el("code");
    const header = el(
      "div",
      { class: "viewer-head" },
      el("code", { class: "viewer-path", text: path }),
      el("span", { class: "muted", text: info ? `${formatBytes(info.size)} · ${info.origin === "parent" ? "from the parent" : `written in ${info.phase}`}` : "" }),
    );
    this.refs.viewer.replaceChildren(header, el("pre", { class: "code-view", tabindex: "0", "aria-label": `Content of ${path}` }, code));
    try {
      // A finished version is read from storage (what the zip holds); a running one from its events.
      const text = isTerminal(this.model) || info?.content == null
        ? await apiText(paths.file(this.id, path))
        : info.content;
      if (this.selected === path) highlightInto(code, path, text);
    } catch (error) {
      if (this.selected === path) this.refs.viewer.append(el("p", { class: "error", role: "alert", text: error.detail }));
    }
  }

  lock(path, on) {
    if (on) this.locked.add(path);
    else this.locked.delete(path);
    const names = [...this.locked].sort();
    this.refs["locked-summary"].textContent = names.length
      ? `Locked (kept exactly as they are): ${names.join(", ")}`
      : "Tick files in the file list to lock them: a locked file is kept exactly as it is.";
  }

  async cancel() {
    const button = this.refs.cancel;
    button.disabled = true;
    showError(this.refs["page-error"], "");
    try {
      await api(`${paths.generation(this.id)}/cancel`, { method: "POST", body: { reason: "cancelled from the web page" } });
    } catch (error) {
      this.showApiError(error);
    } finally {
      button.disabled = false;
    }
  }

  async download() {
    const button = this.refs.download;
    button.disabled = true;
    showError(this.refs["page-error"], "");
    try {
      await downloadBlob(`${paths.generation(this.id)}/archive`, `${this.model.projectName}-v${this.model.version}.zip`);
    } catch (error) {
      this.showApiError(error);
    } finally {
      button.disabled = false;
    }
  }

  async iterate(event) {
    event.preventDefault();
    const form = event.target;
    const error = this.refs["iterate-error"];
    showError(error, "");
    const prompt = form.elements.prompt.value.trim();
    if (!prompt) {
      showError(error, "Say what should change, for example “add pagination”.");
      form.elements.prompt.focus();
      return;
    }
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const accepted = await api("/generations/iterate", {
        method: "POST",
        idempotencyKey: newIdempotencyKey(),
        body: { parent_generation_id: this.id, modification_prompt: prompt, locked_paths: [...this.locked].sort() },
      });
      this.navigate(`#/g/${accepted.generation_id}`, accepted);
    } catch (failure) {
      if (failure.status === 401) this.onAuthError(failure.detail);
      const problems = (failure.problems || []).map((p) => `${p.location}: ${p.message}`);
      showError(error, [failure.detail, ...problems.filter((p) => !failure.detail.includes(p))].join(" "));
    } finally {
      submit.disabled = false;
    }
  }

  // Until the project's versions are read, this version stands alone in the tree.
  ownVersion() {
    const m = this.model;
    return { generation_id: m.id, version: m.version, parent_generation_id: m.parentId, kind: m.kind, status: m.status, prompt: m.prompt };
  }

  async loadVersions(attempt = 0) {
    if (!this.model.projectId || this.destroyed) return;
    try {
      const project = await api(paths.project(this.model.projectId));
      this.versions = project.versions;
      const parent = this.versions.find((v) => v.generation_id === this.model.parentId);
      if (parent) this.refs["diff-parent"].textContent = `v${parent.version}`;
      this.invalidate();
    } catch (error) {
      // Right after a create, storage may not have recorded the project yet.
      if ((error.status === 404 || error.isNetwork) && attempt < 5) {
        setTimeout(() => this.loadVersions(attempt + 1), 500 * (attempt + 1));
      } else if (error.status === 401) {
        this.onAuthError(error.detail);
      }
    }
  }

  async loadDiff() {
    show(this.refs["diff-panel"], true);
    this.refs.diff.replaceChildren(el("p", { class: "muted", text: "Loading the changes…" }));
    try {
      renderDiff(this.refs.diff, this.refs["diff-summary"], await api(`${paths.generation(this.id)}/diff`));
    } catch (error) {
      this.refs.diff.replaceChildren(el("p", { class: "error", role: "alert", text: error.detail }));
    }
  }

  async loadAudit() {
    const state = this.refs["audit-state"];
    state.textContent = "Loading…";
    try {
      const log = await api(`${paths.generation(this.id)}/events`);
      const verified = log.verified == null ? "" : log.verified ? " The hash chain verifies." : " The hash chain is broken.";
      state.textContent = `${log.count} stored events.${verified}`;
      renderAudit(this.refs.audit, log);
    } catch (error) {
      state.textContent = error.detail;
    }
  }

  showApiError(error) {
    if (error.status === 401) this.onAuthError(error.detail);
    else showError(this.refs["page-error"], error.detail);
  }
}
