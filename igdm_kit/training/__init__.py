"""One training run, in parts with one job each (see ARCHITECTURE.md):

* ``folder`` — the run folder: its files, and the policy for an existing one (new/resume/reuse/error);
* ``parts`` — data, student, teacher, method/module/attack, optimizer, built from a recipe by the factories;
* ``trainer`` — the epoch loop, which tells its ``events`` subscribers what happens;
* ``subscribers`` — progress bar, clean accuracy, metrics log, log line, checkpoints + training state;
* ``final_eval`` — the recipe's ``[eval]`` after training;
* ``signals`` — stop requests.

``igdm_kit.engine.run`` puts them together.
"""
