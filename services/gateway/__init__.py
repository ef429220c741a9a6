"""The gateway: REST API, the SSE stream of each generation, the web page, zip downloads."""
