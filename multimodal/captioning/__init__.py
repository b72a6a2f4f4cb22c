"""Captioning: ProductCaptioner and its metrics."""
