"""Noise schedules, training targets, losses and guidance shared by the methods."""
