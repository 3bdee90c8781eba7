"""Evaluation: the loop's held-out accuracy, and (later) GSM8K, MT-Bench and AlpacaEval."""
