"""The owner's page: a local web page served by the agent (loopback by default) where the owner pairs a
screen, sees and changes what the car shares, reads what left the car, looks at their own trips, exports
incidents, and hands the car over ("forget me").  Flask + Jinja2, every asset shipped (the ``owner``
extra)."""
