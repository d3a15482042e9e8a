"""Real storage services that the tests (and users trying orchfs) run on this machine."""
