"""The evaluation suite (stage `evaluate`): task files in the common shapes (tasks), log-likelihood
scoring (scoring), tasks derived from the evaluation set (derived), and the per-model run with its
CORE-style aggregate (suite)."""
