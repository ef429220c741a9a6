"""The `kiln` client commands: generate, iterate, watch, status, projects, download, diff,
events. They talk to a gateway over HTTP and follow generations over SSE."""
