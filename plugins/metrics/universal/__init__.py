"""Universal adversarial perturbations and robustness categories (Moosavi-Dezfooli et al.)."""
