"""Feature extraction and the evaluation tasks: FITB, compatibility AUC, generation, scoring."""
