"""Per-sample adversarial metrics: attack accuracies, minimal distortions, transferability."""
