"""Training, evaluation, parity, the demo pipeline and its report."""
