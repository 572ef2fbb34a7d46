"""What operators watch: Prometheus metrics (`GET /metrics`) and structured logs.

- `metrics`: the metrics the server processes count themselves (writes, sockets, broadcasts,
  the database pool), shared between worker processes through PROMETHEUS_MULTIPROC_DIR.
- `collectors`: the fleet and the queue, read from the database at scrape time.
- `middleware`: times write requests, counts stored points, and gives each request an id that
  the JSON log lines carry (`logs`).
- `views`: `/metrics`, behind METRICS_TOKEN or open on loopback only.
"""
