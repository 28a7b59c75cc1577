"""A taken owner-page port turns the page off (said in the log); it never stops the agent."""

from __future__ import annotations

import socket

from agent.config import load_config
from agent.ownerpage.server import start_owner_page


def test_a_taken_port_leaves_the_agent_running_without_the_page(tmp_path, caplog):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = tmp_path / "agent.yaml"
    config.write_text(f"vehicle: {{id: t}}\nstate: {{dir: {tmp_path / 'state'}}}\n"
                      f"owner_page: {{enabled: true, port: {port}}}\n")
    try:
        assert start_owner_page(load_config(config)) is None
    finally:
        holder.close()
    assert f"owner page off: cannot listen on 127.0.0.1:{port}: address already in use" in caplog.text
