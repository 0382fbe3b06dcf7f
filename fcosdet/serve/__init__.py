"""`fcosdet serve`: a model over HTTP (app), micro-batched (batching), with per-request options (options)
and limits on bad input (limits)."""
