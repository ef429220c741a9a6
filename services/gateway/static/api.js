// The REST API: every request carries the API key; every error becomes an ApiError whose
// `detail` is the server's problem+json detail (or a plain sentence for a network error).

const KEY_STORAGE = "kiln.apiKey";

export class ApiError extends Error {
  constructor(status, detail, problems = [], extra = {}) {
    super(detail);
    this.status = status; // 0 means the server could not be reached
    this.detail = detail;
    this.problems = problems;
    this.extra = extra;
  }

  get isNetwork() {
    return this.status === 0;
  }
}

export function getKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  localStorage.setItem(KEY_STORAGE, key.trim());
}

export function clearKey() {
  localStorage.removeItem(KEY_STORAGE);
}

// `kiln up` prints `http://host:port/#key=<key>`: keep the key, drop it from the URL.
export function takeKeyFromUrl() {
  const match = location.hash.match(/^#key=([^&]+)/);
  if (!match) return false;
  setKey(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search + "#/");
  return true;
}

const UNAVAILABLE_RETRIES = 3;

// A fresh Idempotency-Key (a UUID; crypto.randomUUID needs a secure context, this does not).
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// A read answered 503 ("still being stored", a dependency starting) is retried after its
// Retry-After. A POST is retried only with an Idempotency-Key (the server answers a repeat
// with what the first attempt made), on a 503 and on a lost answer; never without one.
async function send(path, options = {}) {
  const safe = (options.method || "GET") === "GET" || Boolean(options.idempotencyKey);
  const retries = safe ? UNAVAILABLE_RETRIES : 0;
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await sendOnce(path, options);
    } catch (error) {
      if (!options.idempotencyKey || !(error instanceof ApiError) || attempt >= retries) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (response.status !== 503 || attempt >= retries) return response;
    const seconds = Number(response.headers.get("Retry-After")) || 1;
    await new Promise((resolve) => setTimeout(resolve, Math.min(seconds, 5) * 1000));
  }
}

async function sendOnce(path, { method = "GET", body, signal, idempotencyKey } = {}) {
  const headers = { Authorization: `Bearer ${getKey()}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  try {
    return await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    // Never surface the browser's own wording ("Failed to fetch"): it reads like a failure
    // of the generation, and the generation is most likely still running.
    throw new ApiError(0, "The server cannot be reached right now (network).");
  }
}

async function errorFrom(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not JSON: fall through to a generic sentence
  }
  const detail =
    problem.detail || `The server answered ${response.status} ${response.statusText}.`.trim();
  const { problems = [], ...extra } = problem;
  return new ApiError(response.status, detail, problems, extra);
}

// JSON in, JSON out (null for 204).
export async function api(path, options = {}) {
  const response = await send(path, options);
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

// A file's text.
export async function apiText(path) {
  const response = await send(path);
  if (!response.ok) throw await errorFrom(response);
  return response.text();
}

// A download: fetched with the key (a plain link cannot send it), then saved.
export async function downloadBlob(path, fallbackName) {
  const response = await send(path);
  if (!response.ok) throw await errorFrom(response);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const exact = disposition.match(/filename\*=UTF-8''([^;]+)/i);
  const plain = disposition.match(/filename="?([^";]+)"?/);
  const named = exact ? [exact[0], decodeURIComponent(exact[1])] : plain;
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = named ? named[1] : fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
  return link.download;
}

export const paths = {
  generation: (id) => `/generations/${encodeURIComponent(id)}`,
  file: (id, path) =>
    `/generations/${encodeURIComponent(id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`,
  project: (id) => `/projects/${encodeURIComponent(id)}`,
};
