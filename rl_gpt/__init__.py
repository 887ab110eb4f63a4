"""rl_gpt: generative models of neural-network checkpoints."""
