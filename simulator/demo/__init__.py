"""The end-to-end demo: simulator -> agent -> Mosquitto -> reference receiver, on a real log."""
