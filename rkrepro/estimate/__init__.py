"""What reproducing cells will cost before anything is launched (``rkrepro plan``, ``run
--dry-run``, the campaign summary): :mod:`.cost` per cell and in total, for the device
:mod:`.target` decides, from :mod:`rkrepro.calibration`, a :mod:`.roofline` over the GPU table
:mod:`.gpus`, or a :mod:`.probe` of real steps here.
"""
