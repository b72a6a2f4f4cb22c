"""A toy task living outside the ``multimodal`` package: the word count of a product's title, read from its photo.

It is registered in one place (``MULTIMODAL_TASKS=toy_task.task``, or an entry point in the group
``multimodal.tasks``), after which ``multimodal fit``, ``multimodal predict``, ``multimodal serve --word_counter``
and ``multimodal.load`` run it; ``tests/test_toy_task.py`` proves it.
"""
