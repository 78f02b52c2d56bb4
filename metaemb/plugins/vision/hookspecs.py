"""Hook specifications the vision plugin adds to metaemb's plugin manager (`pm.add_hookspecs`).

Landmark sources are a component kind only the face pipeline knows, so the core does not declare
them: the plugin manager adds this module's specs when it loads the vision plugin, and any plugin
may implement `register_landmark_sources` to add a detector or landmark-file reader that the
align frontend (`frontend.source = "<name>"`) combines with the built-in ones.
"""

from __future__ import annotations

from metaemb.core.plugin.hookspecs import Register, hookspec

#: component kind (as in `metaemb list KIND`) → the hook that fills its registry
COMPONENT_KINDS = {"landmark_sources": "register_landmark_sources"}


@hookspec
def register_landmark_sources(register: Register) -> None:
    """Register face landmark sources (detectors, landmark files): `LandmarkSource` classes."""
