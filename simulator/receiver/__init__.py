"""Reference cloud receiver: MQTT subscriber that verifies, deduplicates and stores batches (issue 4)."""

from simulator.receiver.client import Receiver, ReceiverTls
from simulator.receiver.decode import BatchRejected, verify_batch
from simulator.receiver.report import build_report, format_report
from simulator.receiver.store import ReceiverStore

__all__ = ["BatchRejected", "Receiver", "ReceiverStore", "ReceiverTls", "build_report", "format_report",
           "verify_batch"]
