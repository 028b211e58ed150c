"""The three-brand demo: ``scenario`` drives it, ``nodes`` starts the brands' processes,
``evidence`` writes and verifies what the demo leaves behind (README, "The demo's
evidence")."""
