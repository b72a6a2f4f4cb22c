"""The toy task's declaration in the task contract (:mod:`multimodal.task`): every part named by import path, so
reading it imports no torch."""

from multimodal.task import Serving, Task

TASK = Task(
    name="word_count",
    model="toy_task.model.WordCounter",
    api="toy_task.predictor.WordCounts",
    job="toy_task.job.count_rows",
    serving=Serving(route="words", setting="word_counter", api="toy_task.serve.WordsAPI"),
)
