// Repair rounds: their part of the fold (the same as contracts/state.py), their words, and
// their section of the page. Kept apart from model.js and views.js so the verification badge
// and the repair rounds can change independently.

import { verification } from "./model.js";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// `v` becomes the model's verification, with the repair rounds so far and its headline
// (contracts.state._verified).
export function verified(model, v) {
  if (model.verification && model.verification !== v) v.repairs = model.verification.repairs;
  v.repairs = v.repairs || [];
  v.repair_rounds = v.repairs.filter((r) => r.status !== "running").length;
  v.headline = verificationHeadline(v);
  model.verification = v;
}

// contracts.state.verification_headline, word for word.
export function verificationHeadline(v) {
  const last = v.repairs.length ? v.repairs[v.repairs.length - 1] : null;
  const rounds = v.repair_rounds;
  if (last && last.status === "running") {
    return `repairing: round ${last.round}, ${plural(last.failing_count, "test")} failing`;
  }
  if (v.status === "running") return v.round ? `verifying after repair round ${v.round}` : "verifying";
  if (v.status === "unverified") return `unverified: ${v.reason || "no reason given"}`;
  if (v.status === "no_tests") return "verified: no tests";
  if (v.status === "passed") {
    return `verified: passed${rounds ? ` after ${plural(rounds, "repair round")}` : ""}`;
  }
  const failing = v.failed + v.errors;
  let line;
  if (!failing && v.compile_errors.length) {
    line = `failed: ${plural(v.compile_errors.length, "file")} do not compile`;
  } else {
    line = `failed: ${plural(failing, "test")}`;
    line += rounds ? ` still failing after ${plural(rounds, "round")}` : " failing";
  }
  if (last && ["reverted", "rejected", "failed"].includes(last.status)) {
    const why = last.status === "rejected" ? last.rules.join(", ") : last.reason || "";
    line += ` (round ${last.round} ${last.status}${why ? `: ${why}` : ""})`;
  }
  return line;
}

function current(model) {
  return model.verification || verification("failed", {});
}

export const repairHandlers = {
  "repair.started"(model, e) {
    const v = current(model);
    v.repairs = v.repairs || [];
    if (!v.repairs.some((r) => r.round === e.round)) {
      v.repairs.push({
        round: e.round,
        status: "running",
        failing: e.failing || [],
        failing_count: e.failing_count || 0,
        files_changed: [],
        rules: [],
        reason: null,
      });
    }
    verified(model, v);
  },
  "repair.completed"(model, e) {
    const v = current(model);
    v.repairs = v.repairs || [];
    for (const r of v.repairs) {
      if (r.round !== e.round) continue;
      r.status = e.outcome || "changed";
      r.files_changed = [...new Set([...(e.files_changed || []), ...(e.deleted || [])])].sort();
      r.rules = e.rules || [];
      r.reason = e.reason || null;
    }
    verified(model, v);
  },
  "repair.reverted"(model, e) {
    for (const r of model.verification?.repairs || []) {
      if (r.round === e.round) {
        r.status = "reverted";
        r.reason = e.reason || null;
      }
    }
    verified(model, verification(e.restored.verdict, e.restored));
  },
};

// One line for the event log (services/cli/client/render.py's repair_line).
export function describeRepair(e) {
  switch (e.type) {
    case "repair.started": {
      const named = (e.failing || []).slice(0, 3).join(", ") + ((e.failing || []).length > 3 ? ", …" : "");
      return `Repair round ${e.round}: ${plural(e.failing_count || 0, "test")} failing${named ? ` (${named})` : ""}`;
    }
    case "repair.completed":
      if (e.outcome === "changed") {
        const gone = (e.deleted || []).map((p) => `${p} (deleted)`);
        return `Repair round ${e.round} changed ${[...(e.files_changed || []), ...gone].join(", ")}`;
      }
      if (e.outcome === "unchanged") return `Repair round ${e.round}: the model changed nothing`;
      if (e.outcome === "rejected") return `Repair round ${e.round} rejected: ${(e.rules || []).join(", ")}`;
      return `Repair round ${e.round} failed: ${e.reason}`;
    case "repair.reverted":
      return `Repair round ${e.round} reverted: ${e.reason}`;
    default:
      return null;
  }
}

const ROUND_WORDS = {
  running: "repairing…",
  changed: "changed",
  unchanged: "changed nothing",
  rejected: "rejected",
  failed: "failed",
  reverted: "reverted",
};

// The repair rounds' section of the page: the headline and one line per round. Hidden until
// a round starts.
export function renderRepairs(section, model) {
  const v = model.verification;
  const rounds = v?.repairs || [];
  section.hidden = rounds.length === 0;
  if (!rounds.length) return;
  const headline = document.createElement("p");
  headline.className = "repair-headline";
  headline.dataset.status = v.status;
  headline.textContent = v.headline;
  const list = document.createElement("ol");
  list.className = "repair-rounds";
  for (const r of rounds) {
    const item = document.createElement("li");
    item.dataset.round = String(r.round);
    item.dataset.status = r.status;
    let text = `Round ${r.round}: ${plural(r.failing_count, "test")} failing — ${ROUND_WORDS[r.status] || r.status}`;
    if (r.files_changed.length) text += ` (${r.files_changed.join(", ")})`;
    if (r.status === "rejected" && r.rules.length) text += `: ${r.rules.join(", ")}`;
    else if (r.reason && r.status !== "changed") text += `: ${r.reason}`;
    item.textContent = text;
    list.append(item);
  }
  section.replaceChildren(headline, list);
}
