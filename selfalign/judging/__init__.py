"""Scorers that turn samples into scored samples without human labels."""
