"""Plumbing every service shares: settings, broker connection, embedded nats-server, logs."""
