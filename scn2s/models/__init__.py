"""Denoising models, array level: no AnnData here."""
