"""Data sets and batch pipelines, faithful to fb.resnet.torch (the code the paper trained with).

One module per concern: :mod:`~rkrepro.data.check` (is the data there? torch-free, before the
store opens), :mod:`~rkrepro.data.files` (reading files someone else wrote: regular files, size
and pixel limits, listing without following folder links; torch-free),
:mod:`~rkrepro.data.sampling` (epoch seeds, shards, subsets), :mod:`~rkrepro.data.cifar` (files
and batched augmentation), :mod:`~rkrepro.data.imagenet` (folders and loaders),
:mod:`~rkrepro.data.bicubic` (``image.scale`` as 4 taps per output),
:mod:`~rkrepro.data.fb_transforms` (fb.resnet.torch's ImageNet transforms, per image) and
:mod:`~rkrepro.data.gpu_augment` (``gpu_decode``: the same for a whole batch on any device).
Nothing is imported here, so ``rkrepro.data.check`` stays torch-free.
"""
