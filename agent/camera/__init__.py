"""Camera events: schema and validation, spool and socket intake, what may leave the car (docs/camera-events.md)."""

from agent.camera.events import CameraEvent, CameraEventError, ClipRef, Location, parse_event
from agent.camera.rules import CAMERA_PRIORITY, CAMERA_STREAM, Outgoing, camera_decision
from agent.camera.socket_in import CameraSocketServer
from agent.camera.spool import SpoolWatcher

__all__ = ["CAMERA_PRIORITY", "CAMERA_STREAM", "CameraEvent", "CameraEventError", "CameraSocketServer", "ClipRef",
           "Location", "Outgoing", "SpoolWatcher", "camera_decision", "parse_event"]
