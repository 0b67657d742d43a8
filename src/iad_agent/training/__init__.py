"""Training the agent's VLM on trajectories: supervised fine-tuning with TRL (optionally LoRA)."""

from iad_agent.training.sft import SFTRunConfig, build_trainer, save_checkpoint, train_sft

__all__ = ["SFTRunConfig", "build_trainer", "save_checkpoint", "train_sft"]
