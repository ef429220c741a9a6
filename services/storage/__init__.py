"""Storage: projects the events of every generation into SQL, and reads them back.

`projector.py` writes (one durable consumer, exactly-once by tracked stream position),
`queries.py` only reads (the gateway imports it), `db.py` makes engines and migrates.
"""
