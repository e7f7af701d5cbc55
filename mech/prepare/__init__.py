"""Prepare: data specs -> samples -> frozen inputs with token groups; answer and option targets."""
