"""g1jax: Qwen2.5-VL in Flax NNX and the GRPO learner for the VLM-Gym games in `envs`."""
