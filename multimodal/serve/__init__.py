"""``multimodal serve``: the task APIs over HTTP with LitServe (dynamic batching), and a search page.

Importing this package imports nothing heavy (``multimodal serve --help`` answers at once); ``app`` builds the
server, ``task_api`` holds what the per-task LitAPIs share (one module each: ``tag_api``, ``caption_api``,
``search_api``), ``requests`` turns HTTP input into model input.
"""

MB = 1024 * 1024
DEFAULT_MAX_UPLOAD = 10 * MB
DEFAULT_MAX_PIXELS = 40_000_000
FORM_SLACK = 64 * 1024  # a form's own bytes (boundaries, other fields) beyond the upload limit
DEFAULT_RELOAD_INTERVAL = 0.2  # seconds between looks for a new build of the index (one realpath: microseconds)
