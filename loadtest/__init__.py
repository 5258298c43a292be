"""A black-box load tester for LiveKit-compatible SFUs."""
