"""The wire: every event, command, subject and stream Kiln's services share.

Services depend on this package, never on each other.
"""
