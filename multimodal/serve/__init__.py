"""``multimodal serve``: the task APIs over HTTP with LitServe (dynamic batching), and a search page."""
