"""Building blocks that methods grow from a network's taps.

- `kerakd.blocks.branches`: a branch from a student's tap down to its last
  stage, pooled to a vector, by builder name (LFMA's heads, AID's branches).
- `kerakd.blocks.bifpn`: BiFPNc, the bidirectional feature pyramid that is
  FRSKD's self-teacher.

The blocks build layers and functional models; the methods
(`kerakd.methods`) that call them own those, weights included.
"""

from kerakd.blocks import bifpn, branches  # noqa: F401
