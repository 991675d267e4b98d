"""The path of an event, one module per stage, in order: ``verify`` (who is posting, from
where), ``parse`` (the body becomes an ``Event``), ``ingest`` (stored with its deliveries),
``deliver`` (the worker runs each plugin's handler, with retries), ``wakeup`` (what wakes an
idle worker). No Flask here: the worker process runs without it."""
