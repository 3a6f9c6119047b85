"""One training run, in parts with one job each (see ARCHITECTURE.md); private to the host:

* ``engine`` — ``run(recipe)``: puts the parts together, prepares the teacher first;
* ``parts`` — data, student, teacher, method/module/attack, optimizer, built from a recipe by the factories;
  ``split`` — the validation split; ``optim`` — optimizer, schedule and warm-up;
* ``trainer`` — the epoch loop, which tells its callbacks (``events``) what happens; ``step`` and ``loss`` —
  one step's cached forwards and its total loss; ``batches`` — order and augmentation; ``passes`` — counting;
* the host's own callbacks (``builtin_callbacks`` registers them): ``callbacks`` (progress bar, clean
  accuracy, finiteness, metrics log, log line, checkpoints + training state), ``ema``, ``validation``,
  ``tracking``;
* ``final_eval`` — the recipe's ``[eval]`` after training.
"""
