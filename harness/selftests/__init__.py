"""Linux kselftests: build, KTAP/TAP parsing, running on a target."""
