// Follows one generation's Server-Sent Events: replay, then live, across network drops,
// reloads and expired tokens, delivering every event exactly once and in order.
//
// Guarantees to `onEvent`: each event once (an SSE id at or below the last one delivered is
// a duplicate and is dropped), in `seq` order with no gap (a gap reopens the stream after
// the last delivered id, so the server sends what was missed).

// Every type of contracts/events.py (tests/gateway/test_page_contract.py keeps them equal).
export const EVENT_TYPES = [
  "generation.requested",
  "generation.started",
  "generation.resumed",
  "phase.started",
  "phase.progress",
  "phase.completed",
  "file.written",
  "version.based_on",
  "file.deleted",
  "llm.called",
  "llm.retrying",
  "verify.started",
  "verify.completed",
  "verify.unavailable",
  "repair.started",
  "repair.completed",
  "repair.reverted",
  "generation.completed",
  "generation.failed",
  "generation.cancelled",
];
export const TERMINAL_TYPES = new Set([
  "generation.completed",
  "generation.failed",
  "generation.cancelled",
]);

const MAX_BACKOFF_MS = 10_000;

export class Watcher {
  // renewToken(): a promise of a fresh SSE token (POST /generations/{id}/stream-token).
  // onConnection(state): "connecting" | "live" | "reconnecting" | "ended".
  // onFatal(error): the stream cannot be followed (no such generation, bad API key).
  constructor({ generationId, streamUrl, renewToken, onEvent, onConnection, onFatal }) {
    this.generationId = generationId;
    this.token = new URL(streamUrl, location.href).searchParams.get("token") || "";
    this.renewToken = renewToken;
    this.onEvent = onEvent;
    this.onConnection = onConnection;
    this.onFatal = onFatal;
    this.source = null;
    this.lastId = 0;
    this.lastSeq = 0;
    this.failures = 0;
    this.timer = null;
    this.state = "";
    this.done = false;
    this.opened = 0; // how many EventSources were opened (for diagnostics)
    this.handleOffline = () => this.pause();
    this.handleOnline = () => this.state === "reconnecting" && this.resume({ renew: false });
    this.attempt = 0; // each resume() bumps it; an older, slower resume then stands down
  }

  start() {
    window.addEventListener("offline", this.handleOffline);
    window.addEventListener("online", this.handleOnline);
    this.setState("connecting");
    this.open();
  }

  stop() {
    this.done = true;
    this.closeSource();
    clearTimeout(this.timer);
    window.removeEventListener("offline", this.handleOffline);
    window.removeEventListener("online", this.handleOnline);
  }

  url() {
    const params = new URLSearchParams({ token: this.token });
    if (this.lastId) params.set("last_event_id", String(this.lastId));
    return `/generations/${encodeURIComponent(this.generationId)}/stream?${params}`;
  }

  open() {
    this.closeSource();
    const source = new EventSource(this.url());
    this.source = source;
    this.opened += 1;
    source.onopen = () => {
      this.failures = 0;
      this.setState("live");
    };
    const receive = (message) => this.receive(source, message);
    for (const type of EVENT_TYPES) source.addEventListener(type, receive);
    source.onmessage = receive;
    source.onerror = () => this.handleError(source);
  }

  receive(source, message) {
    if (source !== this.source || this.done) return;
    const id = Number(message.lastEventId);
    if (!Number.isFinite(id) || id <= this.lastId) return;
    const event = JSON.parse(message.data);
    if (event.seq <= this.lastSeq) return;
    if (event.seq !== this.lastSeq + 1) {
      this.resume({ renew: false });
      return;
    }
    this.lastId = id;
    this.lastSeq = event.seq;
    this.onEvent(event, id);
    if (TERMINAL_TYPES.has(event.type)) {
      this.stop();
      this.setState("ended");
    }
  }

  handleError(source) {
    if (source !== this.source || this.done) return;
    if (source.readyState === EventSource.CONNECTING) {
      // The browser reconnects by itself, sending Last-Event-ID.
      this.setState("reconnecting");
      return;
    }
    // The browser gave up: a 401 for an expired token, or the server is unreachable.
    this.failures += 1;
    this.resume({ renew: true });
  }

  // Going offline may leave a dead connection open; close it and reopen once back.
  pause() {
    if (this.done) return;
    this.attempt += 1;
    this.closeSource();
    clearTimeout(this.timer);
    this.setState("reconnecting");
  }

  async resume({ renew }) {
    if (this.done) return;
    const attempt = ++this.attempt;
    const current = () => !this.done && attempt === this.attempt;
    this.closeSource();
    clearTimeout(this.timer);
    this.setState("reconnecting");
    const delay = this.failures > 1 ? Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.failures) : 0;
    if (delay) await new Promise((resolve) => (this.timer = setTimeout(resolve, delay)));
    if (!current()) return;
    try {
      if (renew) this.token = await this.renewToken();
    } catch (error) {
      if (!current()) return;
      if (error.status === 401 || error.status === 404) {
        this.stop();
        this.onFatal(error);
        return;
      }
      this.failures += 1;
      this.timer = setTimeout(() => this.resume({ renew: true }), 1000);
      return;
    }
    if (current()) this.open();
  }

  closeSource() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onConnection(state);
  }
}
