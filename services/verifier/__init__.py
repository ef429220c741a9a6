"""The verifier: runs each version's own tests, lint and compile check in a sandbox."""
