"""The route service: accounts, login and server choice, message routing (CIM's cim-forward-route)."""
