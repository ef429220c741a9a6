// A generation as the page knows it, folded from its events (no DOM here). The same fold as
// contracts/state.py: both must pass the cases of tests/contracts/fold_cases.json
// (tests/browser/test_fold.py runs them here, through `summaryOf`).

import { describeRepair, repairHandlers, verified } from "./repairs.js";

export function createModel(generationId) {
  return {
    id: generationId,
    projectId: null,
    projectName: "",
    version: null,
    kind: "create",
    parentId: null,
    prompt: "",
    provider: "",
    modelName: null,
    lockedPaths: [],
    status: "pending",
    progress: 0,
    phase: null,
    phases: new Map(), // name -> { name, title, state, startedAt, durationMs, files }
    files: new Map(), // path -> { size, sha256, phase, origin, content }
    filesVersion: 0, // bumped whenever the set of files changes
    deleted: new Map(), // path -> reason
    tokensIn: 0,
    tokensOut: 0,
    llmCalls: 0,
    retry: null, // { reason, delayS, atMs, attempt, message, phase }
    verification: null, // contracts.state.Verification, in its own field names
    failure: null,
    cancelled: null,
    completed: null,
    notes: [], // resumptions, shown in the timeline
    events: [], // { id, seq, type, at, text }
    startedAt: null,
    finishedAt: null,
    lastSeq: 0, // the highest seq applied: an event at or below it changes nothing
  };
}

export const isTerminal = (model) => ["completed", "failed", "cancelled"].includes(model.status);

function phaseEntry(model, name, title = "") {
  if (!model.phases.has(name)) {
    model.phases.set(name, { name, title: title || name, state: "waiting", files: [] });
  }
  const entry = model.phases.get(name);
  if (title) entry.title = title;
  return entry;
}

function stopRunningPhases(model, phaseName) {
  for (const entry of model.phases.values()) {
    if (entry.state === "running" || entry.name === phaseName) entry.state = "stopped";
  }
}

const handlers = {
  "generation.requested"(model, e) {
    Object.assign(model, {
      projectId: e.project_id,
      projectName: e.project_name,
      version: e.version,
      kind: e.kind || "create",
      parentId: e.parent_generation_id || null,
      prompt: e.prompt || "",
      provider: e.provider || "",
      modelName: e.model || null,
      lockedPaths: e.locked_paths || [],
    });
  },
  "generation.started"(model, e) {
    model.status = "running";
    model.startedAt = Date.parse(e.at);
    model.provider = e.provider || model.provider;
    model.modelName = e.model || model.modelName;
    for (const plan of e.plan || []) phaseEntry(model, plan.name, plan.title);
  },
  "generation.resumed"(model, e) {
    model.status = "running";
    model.notes.push(`Resumed by ${e.worker} (attempt ${e.attempt}) from the ${e.from_phase} phase`);
  },
  "phase.started"(model, e) {
    model.status = "running";
    model.phase = e.phase;
    model.retry = null;
    Object.assign(phaseEntry(model, e.phase, e.title), {
      state: "running",
      startedAt: Date.parse(e.at),
      durationMs: null,
    });
  },
  "phase.progress"(model) {
    model.retry = null;
  },
  "phase.completed"(model, e) {
    const entry = phaseEntry(model, e.phase);
    entry.state = "done";
    entry.durationMs = e.duration_ms || (entry.startedAt ? Date.parse(e.at) - entry.startedAt : 0);
    entry.files = e.files || [];
    model.retry = null;
  },
  "file.written"(model, e) {
    model.files.set(e.path, {
      size: e.size,
      sha256: e.sha256,
      phase: e.phase,
      origin: e.origin || "generated",
      content: e.content,
    });
    model.deleted.delete(e.path);
    model.filesVersion += 1;
  },
  "version.based_on"(model, e) {
    // The parent's files, named by content: the viewer fetches one when it is opened.
    for (const f of e.files || []) {
      model.files.set(f.path, { size: f.size, sha256: f.sha256, phase: e.phase || "plan", origin: "parent", content: undefined });
      model.deleted.delete(f.path);
    }
    model.filesVersion += 1;
  },
  "file.deleted"(model, e) {
    model.files.delete(e.path);
    model.deleted.set(e.path, e.reason);
    model.filesVersion += 1;
  },
  "llm.called"(model, e) {
    model.tokensIn += e.tokens_in || 0;
    model.tokensOut += e.tokens_out || 0;
    model.llmCalls += 1;
    if (e.outcome === "ok") model.retry = null;
  },
  "llm.retrying"(model, e) {
    model.retry = {
      reason: e.reason,
      delayS: e.delay_s,
      atMs: Date.parse(e.at),
      attempt: e.attempt,
      message: e.message || "",
      phase: e.phase,
    };
  },
  "verify.started"(model, e) {
    verified(model, verification("running", e));
  },
  "verify.completed"(model, e) {
    verified(model, verification(e.verdict, e));
  },
  "verify.unavailable"(model, e) {
    verified(model, verification("unverified", e));
  },
  ...repairHandlers,
  "generation.completed"(model, e) {
    model.status = "completed";
    model.progress = 100;
    model.retry = null;
    model.finishedAt = Date.parse(e.at);
    model.completed = { fileCount: e.file_count, totalBytes: e.total_bytes, durationMs: e.duration_ms };
  },
  "generation.failed"(model, e) {
    model.status = "failed";
    model.retry = null;
    model.finishedAt = Date.parse(e.at);
    model.failure = {
      phase: e.phase,
      message: e.message,
      retryable: Boolean(e.retryable),
      kind: e.error_kind || "",
      filesKept: e.files_kept ?? model.files.size,
    };
    stopRunningPhases(model, e.phase);
  },
  "generation.cancelled"(model, e) {
    model.status = "cancelled";
    model.retry = null;
    model.finishedAt = Date.parse(e.at);
    model.cancelled = { by: e.by, reason: e.reason || "", phase: e.phase, filesKept: e.files_kept };
    stopRunningPhases(model, e.phase);
  },
};

export function verification(status, e) {
  return {
    status,
    round: e.round || 0,
    passed: e.passed || 0,
    failed: e.failed || 0,
    errors: e.errors || 0,
    skipped: e.skipped || 0,
    lint_findings: e.lint_findings || 0,
    format_findings: e.format_findings || 0,
    duration_ms: e.duration_ms || 0,
    compile_errors: e.compile_errors || [],
    failures: (e.failures || []).map((f) => ({
      test_id: f.test_id,
      message: f.message || "",
      kind: f.kind || "failure",
    })),
    reason: e.reason ?? null,
  };
}

// "tests: 20 passed · lint: clean · format: clean", as the CLI says it.
export function verificationLine(v) {
  const counts = [`${v.passed} passed`];
  for (const [n, word] of [[v.failed, "failed"], [v.errors, "errors"], [v.skipped, "skipped"]]) {
    if (n) counts.push(`${n} ${word}`);
  }
  const lint = v.lint_findings ? `${v.lint_findings} findings` : "clean";
  const format = v.format_findings ? `${v.format_findings} files to reformat` : "clean";
  let line = `tests: ${counts.join(", ")} · lint: ${lint} · format: ${format}`;
  if (v.compile_errors.length) line += ` · ${v.compile_errors.length} files do not compile`;
  return line;
}

// Apply one event; false (changing nothing) for an event already applied (its seq not above
// the last one's) or one after the generation ended, as contracts/state.py's `apply`.
export function applyEvent(model, event, id) {
  if (event.seq <= model.lastSeq) return false;
  model.lastSeq = event.seq;
  if (isTerminal(model)) return false;
  handlers[event.type]?.(model, event);
  if (typeof event.progress === "number") model.progress = Math.max(model.progress, event.progress);
  model.events.push({ id, seq: event.seq, type: event.type, at: event.at, text: describe(event) });
  return true;
}

// The model in contracts/state.py's words (GenerationSummary's fields, the file set, whether
// a retry is announced): what the shared fold cases compare.
export function summaryOf(model) {
  const phases = [...model.phases.values()];
  const ended = model.failure || model.cancelled;
  let error = null;
  if (model.failure) error = model.failure.message;
  else if (model.cancelled) error = model.cancelled.reason || `cancelled by ${model.cancelled.by}`;
  return {
    project_id: model.projectId,
    project_name: model.projectName,
    version: model.version,
    kind: model.kind,
    parent_generation_id: model.parentId,
    provider: model.provider,
    model: model.modelName,
    prompt: model.prompt,
    locked_paths: model.lockedPaths,
    status: model.status,
    progress: model.progress,
    phase: model.phase,
    phases_started: phases.filter((p) => p.startedAt != null).map((p) => p.name),
    phases_completed: phases.filter((p) => p.state === "done").map((p) => p.name),
    phase_durations_ms: Object.fromEntries(
      phases.filter((p) => p.state === "done").map((p) => [p.name, p.durationMs]),
    ),
    file_count: model.files.size,
    total_bytes: [...model.files.values()].reduce((sum, f) => sum + f.size, 0),
    tokens_in: model.tokensIn,
    tokens_out: model.tokensOut,
    llm_calls: model.llmCalls,
    error,
    error_phase: ended ? (ended.phase ?? null) : null,
    error_kind: model.failure ? model.failure.kind : null,
    retryable: model.failure ? model.failure.retryable : false,
    last_seq: model.lastSeq,
    verification: model.verification,
    files: Object.fromEntries(
      [...model.files].map(([path, f]) => [
        path,
        { size: f.size, sha256: f.sha256, phase: f.phase, origin: f.origin },
      ]),
    ),
    deleted: Object.fromEntries(model.deleted),
    retrying: model.retry !== null,
  };
}

export function formatBytes(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatDuration(ms) {
  if (ms == null || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

// One line a person can read, for the event log.
export function describe(e) {
  switch (e.type) {
    case "generation.requested":
      return `${e.kind === "iterate" ? "Iteration" : "Project"} "${e.project_name}" v${e.version} requested (${e.provider})`;
    case "generation.started":
      return `Started by ${e.worker} with ${e.provider}${e.model ? ` (${e.model})` : ""}`;
    case "generation.resumed":
      return `Resumed by ${e.worker} from ${e.from_phase} (attempt ${e.attempt})`;
    case "phase.started":
      return `${e.phase}: ${e.title || "started"}`;
    case "phase.progress":
      return `${e.phase}: ${e.message || formatBytes(e.bytes_received)} received`;
    case "phase.completed":
      return `${e.phase} done in ${formatDuration(e.duration_ms)}: ${e.files?.length || 0} file(s)`;
    case "file.written":
      return `${e.path} (${formatBytes(e.size)}${e.origin === "parent" ? ", from the parent" : ""})`;
    case "version.based_on": {
      const size = (e.files || []).reduce((total, f) => total + f.size, 0);
      return `${e.files?.length || 0} file(s) of the parent kept (${formatBytes(size)})`;
    }
    case "file.deleted":
      return `${e.path} deleted: ${e.reason}`;
    case "llm.called":
      return `${e.provider}/${e.model}: ${e.tokens_in} tokens in, ${e.tokens_out} out, ${formatDuration(e.latency_ms)} (${e.outcome})`;
    case "llm.retrying":
      return `${e.phase}: retry in ${e.delay_s} s (${e.reason.replace("_", " ")}, attempt ${e.attempt})`;
    case "verify.started":
      return `Verifying${e.round ? ` after repair round ${e.round}` : ""}: the version's own tests, sandboxed`;
    case "verify.completed":
      return `Tests ${e.verdict.replace("_", " ")}: ${verificationLine(verification(e.verdict, e))}`;
    case "verify.unavailable":
      return `Unverified: ${e.reason}`;
    case "repair.started":
    case "repair.completed":
    case "repair.reverted":
      return describeRepair(e);
    case "generation.completed":
      return `Completed: ${e.file_count} files, ${formatBytes(e.total_bytes)} in ${formatDuration(e.duration_ms)}`;
    case "generation.failed":
      return `Stopped in ${e.phase || "no phase"}: ${e.message}`;
    case "generation.cancelled":
      return `Cancelled by ${e.by}${e.reason ? `: ${e.reason}` : ""}`;
    default:
      return e.type;
  }
}

// Paths -> nested directories: { dirs: Map<name, tree>, files: [path] }.
export function fileTree(paths) {
  const root = { dirs: new Map(), files: [] };
  for (const path of [...paths].sort()) {
    const parts = path.split("/");
    let node = root;
    for (const dir of parts.slice(0, -1)) {
      if (!node.dirs.has(dir)) node.dirs.set(dir, { dirs: new Map(), files: [] });
      node = node.dirs.get(dir);
    }
    node.files.push(path);
  }
  return root;
}
