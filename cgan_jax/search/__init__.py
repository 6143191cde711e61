"""Knowledge-transfer-graph search (the paper's sections 4.1, 4.3, 4.4): `python -m
cgan_jax.search`. `space` (the graph as Optuna parameters, the trial config), `study`
(storage, workers, stale trials, the objective) and `report` (tables and figures)."""
