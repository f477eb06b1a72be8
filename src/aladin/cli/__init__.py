"""The `aladin` command line: flags → configs → the verbs in aladin.pipeline."""
