"""Watching training: loss-spike detection, run histories, plots and the W&B loss-spike workspace."""
