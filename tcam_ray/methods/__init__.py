"""Methods: CAMs (stage 1) and TCAM pseudo-labels and losses (stage 2)."""
