"""Posts a JSON message to a webhook whenever a Kiln generation ends."""

from examples.notify_on_completion.notifier import Notification, Notifier, post, run

__all__ = ["Notification", "Notifier", "post", "run"]
