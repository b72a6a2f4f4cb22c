"""Reading catalogues: manifests (CSV / JSONL / Parquet), images, the product dataset and ProductDataModule."""
