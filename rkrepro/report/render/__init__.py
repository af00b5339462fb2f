"""The renderers of ``rkrepro report``, moved to :mod:`.content` on their way to one module per
format."""

from rkrepro.report.render.content import *  # noqa: F403
