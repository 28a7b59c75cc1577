"""How the stages are joined: the composition root (``build``), the one way into the store (``writer``),
the consent gate both doors pass (``gate``), the CAN data path (``pipeline``) and the side inputs
(``sidecars``: incident snapshots, camera events).  ``build``'s docstring draws the flow."""
