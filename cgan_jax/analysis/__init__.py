"""Reading run workdirs back for the paper's tables and figures (`python -m cgan_jax.analyze`)."""
