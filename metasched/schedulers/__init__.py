"""Learning-rate schedulers sharing one protocol (see DESIGN §2.2 and §6)."""

__all__: list[str] = []
