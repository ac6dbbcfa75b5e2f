"""Cached partial fine-tuning: the frozen bottom of a backbone run once, its top blocks trained on the cached maps
(:mod:`.run`)."""
