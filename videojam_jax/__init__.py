"""videojam_jax: VideoJAM (joint appearance-motion video diffusion) in JAX/Flax."""
