"""cgan_jax: Collaborative Learning of GANs (Tsukahara et al., VISAPP 2021) in JAX/Flax."""

__version__ = "0.1.0"
