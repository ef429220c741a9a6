"""HTTP routes, thin: they parse, call the gateway's parts, and shape the answer."""
