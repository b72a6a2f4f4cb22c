"""LightningModules, one per task, composed from encoders, a fusion block and heads."""
