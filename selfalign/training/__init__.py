"""Preference training: config, data (tokenized sequence groups), objectives, and the training loop."""
