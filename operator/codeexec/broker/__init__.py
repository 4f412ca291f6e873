"""The bindings broker: `codeexec broker` serves the sandboxes' `db` calls, the only holder of database credentials."""
