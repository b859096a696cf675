"""Operating a running graph: Prometheus metrics, a status page, `streamdag top`, structured logs
and the continuous integrity check. Nothing here is on the per-message hot path."""
