"""Reliability suite (issue 7): fault injection against the running agent; every test is bounded in time."""
