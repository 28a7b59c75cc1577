"""Transport signals checked in the car (issue 15): rolling counters and checksums of raw frames.

* ``fields``: where a counter or checksum sits in a frame (one DBC signal, or split ``_LSB``/``_MSB`` pieces);
* ``checksums``: the DBC families' checksum algorithms (as opendbc documents them) and which one a message uses;
* ``counters``: judging counter steps (ok, repeat, jump, resync);
* ``checker``: ``TransportChecker``, counting per bus and message what the frames show;
* ``infer``: role proposals for ``catalog init`` (``role_by_name``, ``infer_roles`` from recorded frames).
"""

from agent.integrity.checker import MessageCounts, MessageLayout, TransportChecker, layout_for, layouts_from_dbcs
from agent.integrity.checksums import ALGORITHMS, algorithm_for, detect_algorithm, family_of
from agent.integrity.infer import RoleProposal, infer_roles, role_by_name

__all__ = ["ALGORITHMS", "MessageCounts", "MessageLayout", "RoleProposal", "TransportChecker", "algorithm_for",
           "detect_algorithm", "family_of", "infer_roles", "layout_for", "layouts_from_dbcs", "role_by_name"]
