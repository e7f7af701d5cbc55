"""Figures: results -> matplotlib figures."""
