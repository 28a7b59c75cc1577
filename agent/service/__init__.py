"""Running the agent as a system service: systemd notification, resource figures, state directory."""
