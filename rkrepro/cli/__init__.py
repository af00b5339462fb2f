"""The ``rkrepro`` command line (:mod:`rkrepro.cli.app`): parse, call, render; no domain logic.
Options shared by several commands are defined once, in :mod:`rkrepro.cli.options`."""
