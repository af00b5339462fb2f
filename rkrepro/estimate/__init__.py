"""What reproducing cells will cost before anything is launched (``rkrepro plan``, ``run
--dry-run``)."""
