"""Alignment methods (sft, reward, dpo, ppo) and their evaluation. No method imports another: what
they share lives in common.py (loading, prompts, log-probs), pairs.py (comparison subsets, mirrors)
and reward_model.py (the reward model the PPO stage and the judge read)."""
