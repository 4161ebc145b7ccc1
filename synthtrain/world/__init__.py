"""The built-in fictional world: its facts, the tasks about them, the training corpus and the held-out problems."""
