"""Diagnostics on the vehicle's buses: OBD-II (SAE J1979) and UDS (ISO 14229) requests and their DTCs.

* ``agent.diag.requests``: ``RequestScheduler``, the periodic requests and the ISO-TP flow control their
  multi-frame answers need, only on buses the configuration allows to be written;
* ``agent.diag.dtc``: parsing DTC responses (UDS 0x59, OBD-II modes 03/07/0A) and ``DtcTracker``, the
  changes between readings (appeared, cleared, status changed).

The answers' values (mode 01 PIDs) are decoded by the ordinary DBC path with ``dbc/obd2/obd2_j1979.dbc``.
"""

from agent.diag.dtc import DtcChange, DtcParseError, DtcReading, DtcRecord, DtcTracker, parse_dtc_response
from agent.diag.request_spec import NotWritableError, RequestSpec, spec_from_config
from agent.diag.requests import RequestScheduler

__all__ = ["DtcChange", "DtcParseError", "DtcReading", "DtcRecord", "DtcTracker", "NotWritableError",
           "RequestScheduler", "RequestSpec", "parse_dtc_response", "spec_from_config"]
