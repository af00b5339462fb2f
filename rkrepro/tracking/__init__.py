"""Every MLflow read and write of rkrepro, and nothing else imports mlflow.

- :mod:`.keys`: the names of experiments, tags and metrics (mlflow- and torch-free);
- :mod:`.store`: reaching a store (checks, the client that waits out SQLite's lock, the artifact
  rule, one-line errors with no password in them);
- :mod:`.runs`: the writer of training runs (:class:`~.runs.Tracker`, :class:`~.runs.RunLog`);
- :mod:`.reports`: the report's plots run;
- :mod:`.artifacts`: a run's files in a local artifact store, never written through a link;
- :mod:`.reader`: reading runs back (status, report, list), metric histories, experiments.

- :mod:`.training_run`: what one training run records (configuration, epochs, how it ended).

Importing the package imports none of them, so ``rkrepro --help`` and ``rkrepro list`` stay
free of mlflow and torch.
"""
